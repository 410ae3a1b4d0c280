"""What a model and an engine need of one GPU, from the model's config alone (no weights).

- `count_parameters`: the model's parameters, counted on HF's own modules built on the meta
  device (exact for every architecture transformers knows; nothing is allocated), per tensor:
  all of them (what memory holds) and, in a mixture of experts, the active ones (a token's top k
  routed experts, the shared ones and the rest: what the cost model counts).
- `weight_bytes`: every parameter at the run's dtype, except what the checkpoint's
  `quantization_config` stores quantized (fp8 blocks, mxfp4 experts), at that format's size with
  its scales.
- `need_per_gpu`: weights per GPU (`weight_bytes` / tensor-parallel ranks) plus the
  engine's own memory for the configured rows and tokens:
  - hf: the recipients' prefix K/V and the donors' (one forward of both), and the smallest
    chunk the engine can shrink to (one cell per instance: `chunk_bytes`, the estimate the
    engine sizes its chunks with);
  - vllm: K/V for one request of the whole context (vLLM refuses to start without it), its
    profiling forward of `VLLM_BATCHED_TOKENS` tokens and the sampler's logits, all of
    it inside `VLLM_MEMORY_UTILIZATION` of the GPU.
Figures are decimal gigabytes (1e9 bytes), as GPUs are sold.
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass

GB = 1e9
ELEMENT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
VLLM_MEMORY_UTILIZATION = 0.9  # vLLM's default gpu_memory_utilization: the share it may take
VLLM_BATCHED_TOKENS = 8192  # the tokens of vLLM's profiling forward (max_num_batched_tokens)
VLLM_SEQUENCES = 256  # its max_num_seqs: rows of the sampler's logits
CUDA_CONTEXT_BYTES = 1 * GB  # the CUDA context and torch's workspace, outside the allocator


def dims(config) -> dict:
    """Heads, widths and vocabulary of a model config (a dict or a transformers config)."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    heads = get("num_attention_heads") or get("n_head")
    hidden = get("hidden_size") or get("n_embd")
    return {"heads": heads, "hidden": hidden,
            "inter": get("intermediate_size") or get("n_inner") or 4 * hidden,
            "kv_heads": get("num_key_value_heads") or heads,
            "head_dim": get("head_dim") or hidden // heads,
            "layers": get("num_hidden_layers") or get("n_layer"),
            "vocab": get("vocab_size"),
            "context": get("max_position_embeddings") or get("n_positions")}


def chunk_bytes(d: dict, element: int, batch: int, prefix_len: int, n: int, max_new_tokens: int) -> int:
    """An upper estimate of the transient memory of one chunk of n cells for B instances.

    At the last decoding step (the largest), rows R = B * n, s = steps + 1 own keys:
    - the rows' own K/V in every layer (the only cache that grows with the cells);
    - one layer's prefix attention: fp32 scores [B, H, n, P], four live copies
      (product, scale, exp, and the allocator's reuse), plus the folded queries/outputs;
    - one layer's own attention: fp32 scores [R, H, s], four copies;
    - activations of R rows through the widest module (four live tensors);
    - fp32 logits [R, V] and their log-softmax.
    The sum is doubled for allocator fragmentation (growing caches), as measured in
    tests/test_memory.py. The prefix KV itself is not counted: it exists once.
    """
    steps = max_new_tokens + 1
    rows = batch * n
    own_kv = d["layers"] * 2 * rows * d["kv_heads"] * steps * d["head_dim"] * element
    prefix_scores = 4 * batch * d["heads"] * n * prefix_len * 4 + 4 * rows * d["heads"] * d["head_dim"] * 4
    own_scores = 4 * rows * d["heads"] * steps * 4
    activations = 4 * rows * (d["hidden"] + 2 * d["inter"]) * element
    logits = 2 * rows * d["vocab"] * 4
    return int(2 * (own_kv + prefix_scores + own_scores + activations + logits))


def cells_for_budget(d: dict, batch: int, prefix_len: int, max_new_tokens: int, budget_bytes: int,
                     most: int) -> int:
    """The largest chunk (at most `most` cells) whose `chunk_bytes` estimate fits the budget (d: `dims` plus
    the model's layers and its "element" size)."""
    fits = 0
    low, high = 1, most
    while low <= high:
        mid = (low + high) // 2
        if chunk_bytes(d, d["element"], batch, prefix_len, mid, max_new_tokens) <= budget_bytes:
            fits, low = mid, mid + 1
        else:
            high = mid - 1
    if fits < 1:
        need = chunk_bytes(d, d["element"], batch, prefix_len, 1, max_new_tokens)
        raise ValueError(f"a memory budget of {budget_bytes / 2**20:.0f} MiB is below one cell's "
                         f"{need / 2**20:.0f} MiB for {batch} instance(s) of {prefix_len + 1} tokens; "
                         "raise it or lower the batch size")
    return fits


EXPERTS_KEYS = ("num_local_experts", "n_routed_experts", "num_experts", "moe_num_experts")  # routed, per layer
TOP_K_KEYS = ("num_experts_per_tok", "moe_topk", "num_selected_experts")  # routed experts a token computes


@dataclass(frozen=True)
class Tensor:
    """One parameter tensor of a model, as the memory fit sees it."""
    module: str  # the module's path, e.g. "model.layers.3.mlp.experts"
    name: str  # within the module: "weight", "bias", "gate_up_proj", ...
    shape: tuple[int, ...]
    kind: str  # "linear" (an nn.Linear's), "experts" (a routed-experts module's), "other"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def is_weight(self) -> bool:
        """A weight matrix (what a quantization converts), not a bias or a vector."""
        return len(self.shape) >= 2 and not self.name.endswith("bias")


@dataclass(frozen=True)
class ParameterCount:
    """A model's parameters, from its config alone: all of them (what memory holds) and those one token
    computes through (what the cost model counts: a mixture of experts' top k routed experts per layer,
    its shared experts, attention and embeddings; a dense model's are all of them)."""
    total: int
    routed: int  # every routed expert's parameters, all layers (0: dense)
    experts: int  # routed experts per MoE layer (0: dense)
    top_k: int  # routed experts each token computes
    embedding: int  # the input embedding (a lookup; counted in `active` as in `total`); 0 where tied
    tensors: tuple[Tensor, ...]
    output_modules: tuple[str, ...]  # the output embedding's module(s): a quantizer's default skip
    estimated: bool  # from the shape (`estimated_tensors`), not from HF's modules

    @property
    def active(self) -> int:
        if not self.routed or not self.experts or not self.top_k:
            return self.total
        return self.total - self.routed + self.routed // self.experts * self.top_k


def parameter_count(model_config: dict, trust_remote_code: bool = False) -> int:
    """The model's parameters (all of them), from HF's own modules built on the meta device (tied weights
    once); where transformers cannot build them from the config alone (a model type it does not know,
    remote code), `estimate_parameters`, logged."""
    return count_parameters(model_config, trust_remote_code).total


def count_parameters(model_config: dict, trust_remote_code: bool = False) -> ParameterCount:
    """`ParameterCount` of a config. Counted once per config (planning, the fit and the dry run ask)."""
    return _count_parameters(json.dumps(model_config, sort_keys=True, default=str), trust_remote_code)


def experts_of(model_config: dict) -> tuple[int, int]:
    """(routed experts per MoE layer, top k) that the config declares; (0, 0) for a dense model."""
    configs = [model_config] + ([model_config["text_config"]] if isinstance(model_config.get("text_config"), dict)
                                else [])  # a multimodal config nests its decoder's
    experts = next((c[k] for c in configs for k in EXPERTS_KEYS if c.get(k)), 0)
    top_k = next((c[k] for c in configs for k in TOP_K_KEYS if c.get(k)), 0)
    return int(experts or 0), int(top_k or 0)


@functools.lru_cache(maxsize=8)
def _count_parameters(config_json: str, trust_remote_code: bool) -> ParameterCount:
    import logging

    model_config = json.loads(config_json)
    log = logging.getLogger("xtp_ray")
    try:
        tensors, outputs = meta_tensors(model_config, trust_remote_code)
        estimated = False
    except (ValueError, KeyError, TypeError, ImportError, AttributeError) as exc:
        tensors, outputs, estimated = estimated_tensors(model_config), ("lm_head",), True
        log.warning("parameters of %s estimated from its shape (%.2fB): its modules cannot be built from the "
                    "config alone (%s)", model_config.get("model_type"),
                    sum(t.numel for t in tensors) / 1e9, exc)
    experts, top_k = experts_of(model_config)
    routed = sum(t.numel for t in tensors if t.kind == "experts")
    if routed and not (experts and top_k):
        log.warning("%s has routed experts but its config names no expert count or top k (%s / %s): every "
                    "parameter is counted as active", model_config.get("model_type"), "/".join(EXPERTS_KEYS),
                    "/".join(TOP_K_KEYS))
    tied = not any(t.module in outputs for t in tensors)  # the output embedding is the input one: it computes
    embedding = 0 if tied else sum(t.numel for t in tensors if t.module.endswith(("embed_tokens", "wte")))
    return ParameterCount(sum(t.numel for t in tensors), routed, experts if routed else 0, top_k if routed else 0,
                          embedding, tuple(tensors), outputs, estimated)


def meta_tensors(model_config: dict, trust_remote_code: bool = False) -> tuple[list[Tensor], tuple[str, ...]]:
    """Every parameter tensor (tied ones once) of HF's own modules for the config, built on the meta device
    (nothing is allocated), and the output embedding's module path. A routed-experts module is one whose
    path ends in `.experts` (fused 3-D tensors [experts, ...] or a list of per-expert modules); a shared
    expert (`shared_experts`, `shared_expert`) is not routed."""
    import torch
    import transformers

    config_dict = dict(model_config)
    model_type = config_dict.pop("model_type", None)
    config = transformers.AutoConfig.for_model(model_type, **config_dict)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    modules = dict(model.named_modules())
    output = model.get_output_embeddings()
    outputs = tuple(name for name, module in modules.items() if output is not None and module is output)
    tensors = []
    for path, param in model.named_parameters():  # tied parameters once
        module, _, name = path.rpartition(".")
        routed = any(part == "experts" for part in module.split("."))
        kind = "experts" if routed else "linear" if type(modules[module]) is torch.nn.Linear else "other"
        tensors.append(Tensor(module, name, tuple(param.shape), kind))
    return tensors, outputs


def estimated_tensors(model_config: dict) -> list[Tensor]:
    """A decoder's tensors from its shape: per layer the attention projections (grouped K/V), a gated MLP
    (or, in a mixture of experts, a router, the routed experts and any shared ones at `moe_intermediate_size`,
    after `first_k_dense_replace` dense layers) and two norms, plus untied input and output embeddings
    (Llama's layout; within a few % for dense decoders)."""
    d = dims(model_config)
    hidden, inter = d["hidden"], d["inter"]
    experts, _ = experts_of(model_config)
    expert_inter = model_config.get("moe_intermediate_size") or inter
    shared = model_config.get("n_shared_experts") or 0
    dense_layers = (model_config.get("first_k_dense_replace") or 0) if experts else d["layers"]
    tensors = [Tensor("model.embed_tokens", "weight", (d["vocab"], hidden), "other")]
    for layer in range(d["layers"]):
        prefix = f"model.layers.{layer}"
        for proj, rows in (("q", d["heads"]), ("k", d["kv_heads"]), ("v", d["kv_heads"])):
            tensors.append(Tensor(f"{prefix}.self_attn.{proj}_proj", "weight", (rows * d["head_dim"], hidden),
                                  "linear"))
        tensors.append(Tensor(f"{prefix}.self_attn.o_proj", "weight", (hidden, d["heads"] * d["head_dim"]),
                              "linear"))
        if layer < dense_layers:
            tensors += [Tensor(f"{prefix}.mlp.{proj}", "weight", (inter, hidden), "linear")
                        for proj in ("gate_proj", "up_proj")]
            tensors.append(Tensor(f"{prefix}.mlp.down_proj", "weight", (hidden, inter), "linear"))
        else:
            tensors.append(Tensor(f"{prefix}.mlp.gate", "weight", (experts, hidden), "other"))
            tensors.append(Tensor(f"{prefix}.mlp.experts", "gate_up_proj", (experts, 2 * expert_inter, hidden),
                                  "experts"))
            tensors.append(Tensor(f"{prefix}.mlp.experts", "down_proj", (experts, hidden, expert_inter), "experts"))
            if shared:
                tensors += [Tensor(f"{prefix}.mlp.shared_experts.{proj}", "weight", (shared * expert_inter, hidden),
                                   "linear") for proj in ("gate_proj", "up_proj")]
                tensors.append(Tensor(f"{prefix}.mlp.shared_experts.down_proj", "weight",
                                      (hidden, shared * expert_inter), "linear"))
        tensors += [Tensor(f"{prefix}.{norm}", "weight", (hidden,), "other")
                    for norm in ("input_layernorm", "post_attention_layernorm")]
    tensors.append(Tensor("lm_head", "weight", (d["vocab"], hidden), "linear"))
    return tensors


def estimate_parameters(model_config: dict) -> int:
    """The parameters of `estimated_tensors`."""
    return sum(t.numel for t in estimated_tensors(model_config))


QUANTIZED = {"fp8": "FP8", "mxfp4": "MXFP4"}  # the checkpoint formats whose sizes are modelled
MXFP4_GROUP = 32  # MXFP4: 4-bit values, one 8-bit (E8M0) scale per 32 values
FP8_SCALE_BYTES = 4  # FP8 blocks: one float32 scale (weight_scale_inv) per block


def quantization_of(model_config: dict) -> dict | None:
    """The checkpoint's `quantization_config` (None: stored in the config's dtype). ValueError where its
    method is not one whose sizes are modelled (`QUANTIZED`)."""
    quantization = model_config.get("quantization_config")
    if not quantization or quantization.get("dequantize"):  # dequantized on load: stored in the run's dtype
        return None
    method = quantization.get("quant_method")
    if method not in QUANTIZED:
        raise ValueError(f"the checkpoint's quantization_config ({method}) is not modelled (only "
                         f"{', '.join(QUANTIZED)} are)")
    return quantization


def _converted(count: ParameterCount, quantization: dict) -> list[bool]:
    """Which of `count.tensors` the quantization stores quantized, as transformers' quantizers decide:
    fp8 (FineGrainedFP8) every nn.Linear's weight and the routed experts' weights; mxfp4 the routed
    experts' weights; never a bias, a norm, an embedding or a router that is not an nn.Linear, nor a module
    `modules_to_not_convert` names (default: the output embedding)."""
    import re

    skip = quantization.get("modules_to_not_convert")
    skip = list(count.output_modules) if skip is None else list(skip)

    def kept(module: str) -> bool:  # transformers.quantizers.quantizers_utils.should_convert_module, negated
        return any(re.match(f"{key}\\.", module) or re.match(key, module) or module.endswith(key) for key in skip)

    kinds = ("linear", "experts") if quantization["quant_method"] == "fp8" else ("experts",)
    return [t.kind in kinds and t.is_weight and not kept(t.module) for t in count.tensors]


def _quantized_bytes(tensor: Tensor, quantization: dict) -> float:
    """Bytes of one converted weight, scales included: per 2-D matrix (per expert for [experts, a, b])."""
    *lead, rows, cols = tensor.shape
    matrices = math.prod(lead)
    if quantization["quant_method"] == "mxfp4":
        return matrices * (rows * cols / 2 + math.ceil(rows * cols / MXFP4_GROUP))
    block = quantization.get("weight_block_size")
    scales = math.ceil(rows / block[0]) * math.ceil(cols / block[1]) if block else 1  # else one per tensor
    return matrices * (rows * cols + scales * FP8_SCALE_BYTES)


@dataclass(frozen=True)
class WeightBytes:
    """A model's weights in memory, all GPUs together."""
    total: float
    quantized: float  # of `total`, the converted weights with their scales
    stored: str  # e.g. "bfloat16", "MXFP4 experts (4-bit values + an 8-bit scale per 32), bfloat16 elsewhere"


def weight_bytes(count: ParameterCount, dtype: str, quantization: dict | None) -> WeightBytes:
    """Every parameter at `dtype`, except those a checkpoint's quantization stores quantized, at their
    format's size (`_quantized_bytes`)."""
    element = ELEMENT_BYTES[dtype]
    if quantization is None:
        return WeightBytes(count.total * element, 0.0, dtype)
    converted = _converted(count, quantization)
    quantized = sum(_quantized_bytes(t, quantization) for t, c in zip(count.tensors, converted) if c)
    rest = sum(t.numel for t, c in zip(count.tensors, converted) if not c) * element
    if quantization["quant_method"] == "mxfp4":
        what = f"MXFP4 experts (4-bit values + an 8-bit scale per {MXFP4_GROUP})"
    else:
        block = quantization.get("weight_block_size")
        what = ("FP8 linear and expert weights (a float32 scale per "
                + (f"{block[0]}x{block[1]} block)" if block else "tensor)"))
    skip = quantization.get("modules_to_not_convert")
    elsewhere = f"{dtype} elsewhere" + (f" (not converted: {', '.join(skip)})" if skip else "")
    return WeightBytes(quantized + rest, quantized, f"{what} {quantized / GB:.1f} GB, {elsewhere} {rest / GB:.1f} GB")


@dataclass(frozen=True)
class Need:
    """One actor's need per GPU, in bytes, and how it was worked out."""
    parameters: int
    gpus: int  # the GPUs the weights are split over (tensor-parallel ranks; 1 for hf)
    weights: float  # per GPU
    engine: float  # per GPU: the engine's own memory
    usable_share: float  # of a GPU's memory the engine may fill
    basis: str
    active: int = 0  # parameters a token computes through (a mixture of experts' top k; else all)
    stored: str = ""  # how the weights are stored (`WeightBytes.stored`)

    @property
    def total(self) -> float:
        return self.weights + self.engine

    def fits(self, gpu_bytes: float) -> bool:
        return self.total <= self.usable_share * gpu_bytes - CUDA_CONTEXT_BYTES


def vllm_request_kv(model_config: dict, d: dict, element: int, ranks: int, context: int) -> int:
    """K/V bytes one rank holds for one request of `context` tokens, as vLLM sizes its cache: per layer
    K and V of the rank's KV heads (fewer KV heads than ranks: replicated), or under MLA (`kv_lora_rank`)
    one latent of kv_lora_rank + qk_rope_head_dim per token, on every rank; a sliding-window layer
    (`layer_types`) holds at most the window + one profiling batch of tokens."""
    if model_config.get("kv_lora_rank"):
        per_token = (model_config["kv_lora_rank"] + (model_config.get("qk_rope_head_dim") or 0)) * element
    else:
        per_token = 2 * max(1, d["kv_heads"] // ranks) * d["head_dim"] * element
    window = model_config.get("sliding_window")
    layer_types = model_config.get("layer_types") or ["full_attention"] * d["layers"]
    tokens = [min(context, window - 1 + VLLM_BATCHED_TOKENS) if kind == "sliding_attention" and window else context
              for kind in layer_types[:d["layers"]]]
    return per_token * sum(tokens)


def need_per_gpu(model_config: dict, engine: str, dtype: str, ranks: int, batch_size: int,
                 context_tokens: int | None, new_tokens: int) -> Need:
    """Bytes one GPU of an actor needs: weights / ranks (every expert's, at the checkpoint's quantization
    where it declares one) + the engine's own memory. ValueError where the quantization is not modelled.

    context_tokens: the longest prompt + new tokens the run allows (default: the model's context).
    """
    d = dims(model_config)
    element = ELEMENT_BYTES[dtype]
    count = count_parameters(model_config)
    weights = weight_bytes(count, dtype, quantization_of(model_config))
    params = count.total
    context = context_tokens or d["context"] or 4096
    key_value = (model_config.get("qk_head_dim") or d["head_dim"]) + (model_config.get("v_head_dim") or d["head_dim"])
    kv_per_token = d["layers"] * d["kv_heads"] * key_value * element  # HF's cache (MLA: full keys and values)
    if engine == "vllm":
        kv = vllm_request_kv(model_config, d, element, ranks, context)
        profile = 2 * VLLM_BATCHED_TOKENS * (d["hidden"] + 2 * d["inter"] // ranks) * element
        logits = 2 * VLLM_SEQUENCES * d["vocab"] * 4
        return Need(params, ranks, weights.total / ranks, kv + profile + logits, VLLM_MEMORY_UTILIZATION,
                    f"vllm at tensor parallel {ranks}: weights / {ranks}, K/V of one {context}-token request, "
                    f"a {VLLM_BATCHED_TOKENS}-token profiling forward, within {VLLM_MEMORY_UTILIZATION:.0%} "
                    "of the GPU", count.active, weights.stored)
    prompt = max(1, context - new_tokens)
    prefixes = 2 * batch_size * prompt * kv_per_token  # recipients' and donors' K/V: one forward of both
    chunk = chunk_bytes(d, element, batch_size, prompt, 1, new_tokens)
    mxfp4 = ("; transformers keeps MXFP4 experts only where Triton and the `kernels` package serve the GPU, "
             "else it dequantizes them to bfloat16" if weights.quantized and "MXFP4" in weights.stored else "")
    return Need(params, 1, weights.total, prefixes + chunk, 1.0,
                f"hf on one GPU: weights, the K/V of {batch_size} donor and recipient prompts of {prompt} tokens, "
                f"one cell per instance per forward{mxfp4}", count.active, weights.stored)

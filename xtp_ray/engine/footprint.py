"""What a model and an engine need of one GPU, from the model's config alone (no weights).

- `parameter_count`: the model's parameters, counted on HF's own modules built on the meta
  device (exact for every architecture transformers knows; nothing is allocated).
- `need_per_gpu`: weights per GPU (parameters x dtype size, / tensor-parallel ranks) plus the
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


def parameter_count(model_config: dict, trust_remote_code: bool = False) -> int:
    """The model's parameters, from HF's own modules built on the meta device (tied weights once); where
    transformers cannot build them from the config alone (a model type it does not know, remote code),
    `estimate_parameters`, logged. Counted once per config (planning, the fit and the dry run ask)."""
    return _parameter_count(json.dumps(model_config, sort_keys=True, default=str), trust_remote_code)


@functools.lru_cache(maxsize=8)
def _parameter_count(config_json: str, trust_remote_code: bool) -> int:
    import torch
    import transformers

    model_config = json.loads(config_json)
    config_dict = dict(model_config)
    model_type = config_dict.pop("model_type", None)
    try:
        config = transformers.AutoConfig.for_model(model_type, **config_dict)
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, TypeError, ImportError, AttributeError) as exc:
        import logging

        estimate = estimate_parameters(model_config)
        logging.getLogger("xtp_ray").warning("parameters of %s estimated from its shape (%.2fB): its modules cannot "
                                             "be built from the config alone (%s)", model_type, estimate / 1e9, exc)
        return estimate
    return sum(p.numel() for p in model.parameters())


def estimate_parameters(model_config: dict) -> int:
    """A decoder's parameters from its shape: per layer the attention projections (grouped K/V) and a gated
    MLP, plus untied input and output embeddings (Llama's layout; within a few % for dense decoders)."""
    d = dims(model_config)
    attention = d["hidden"] * d["heads"] * d["head_dim"] * 2 + d["hidden"] * d["kv_heads"] * d["head_dim"] * 2
    per_layer = attention + 3 * d["hidden"] * d["inter"] + 2 * d["hidden"]
    return int(d["layers"] * per_layer + 2 * d["vocab"] * d["hidden"])


@dataclass(frozen=True)
class Need:
    """One actor's need per GPU, in bytes, and how it was worked out."""
    parameters: int
    gpus: int  # the GPUs the weights are split over (tensor-parallel ranks; 1 for hf)
    weights: float  # per GPU
    engine: float  # per GPU: the engine's own memory
    usable_share: float  # of a GPU's memory the engine may fill
    basis: str

    @property
    def total(self) -> float:
        return self.weights + self.engine

    def fits(self, gpu_bytes: float) -> bool:
        return self.total <= self.usable_share * gpu_bytes - CUDA_CONTEXT_BYTES


def need_per_gpu(model_config: dict, engine: str, dtype: str, ranks: int, batch_size: int,
                 context_tokens: int | None, new_tokens: int, parameters: int | None = None) -> Need:
    """Bytes one GPU of an actor needs: weights / ranks + the engine's own memory.

    context_tokens: the longest prompt + new tokens the run allows (default: the model's context).
    """
    d = dims(model_config)
    element = ELEMENT_BYTES[dtype]
    params = parameter_count(model_config) if parameters is None else parameters
    context = context_tokens or d["context"] or 4096
    kv_per_token = 2 * d["layers"] * d["kv_heads"] * d["head_dim"] * element  # all ranks together
    if engine == "vllm":
        kv_heads_per_rank = max(1, d["kv_heads"] // ranks)  # fewer KV heads than ranks: replicated
        kv = 2 * d["layers"] * kv_heads_per_rank * d["head_dim"] * element * context
        profile = 2 * VLLM_BATCHED_TOKENS * (d["hidden"] + 2 * d["inter"] // ranks) * element
        logits = 2 * VLLM_SEQUENCES * d["vocab"] * 4
        return Need(params, ranks, params * element / ranks, kv + profile + logits, VLLM_MEMORY_UTILIZATION,
                    f"vllm at tensor parallel {ranks}: weights / {ranks}, K/V of one {context}-token request, "
                    f"a {VLLM_BATCHED_TOKENS}-token profiling forward, within {VLLM_MEMORY_UTILIZATION:.0%} "
                    "of the GPU")
    prompt = max(1, context - new_tokens)
    prefixes = 2 * batch_size * prompt * kv_per_token  # recipients' and donors' K/V: one forward of both
    chunk = chunk_bytes(d, element, batch_size, prompt, 1, new_tokens)
    return Need(params, 1, params * element, prefixes + chunk, 1.0,
                f"hf on one GPU: weights, the K/V of {batch_size} donor and recipient prompts of {prompt} tokens, "
                "one cell per instance per forward")

"""The vLLM engine: the same grid contract as `hf.HFEngine`, on vLLM.

Per batch of instances: one request per donor (max_tokens 1) records every layer's
donor value inside vLLM's worker (`vllm_worker.TransplantWorker`); then every cell
of every instance, vanilla included, is one request with the recipient prompt:
greedy (temperature 0), `max_tokens` new tokens, its cell in
`SamplingParams.extra_args`. vLLM's automatic prefix caching shares each
instance's recipient prefix (whole KV blocks) across its cells; continuous
batching interleaves them. Option log-probs are the log-probabilities of the
options' tokens at the patched position (`logprob_token_ids`), as the HF engine
computes them. With `tensor_parallel_size > 1` vLLM runs tensor parallel over the
actor's GPUs and every rank applies the same patch: the hooked modules' outputs are
complete on every rank, after the tensor-parallel all-reduce (attention's row-parallel
o_proj, the MLP's down projection, a sparse block's fused experts, shared expert
included). The engine checks that at every grid: the ranks' donor values must agree
(`check_ranks_agree`), as one rank's partial sum would not.

Mixtures of experts run where tests show the vLLM block equal to the reference
(`MOE_RUN`); the others, and shapes vLLM's CPU build cannot run, are refused at load.

`logits` of a CellResult (keep_logits) are the next-token log-probabilities at the
patched position (`logprobs=-1`): the HF engine's logits up to a constant per row.
"""
from __future__ import annotations

import math
import os
import uuid

from ..cells import VANILLA, Cell
from .contract import CellResult
from .footprint import experts_of

WORKER_EXTENSION = "xtp_ray.engine.vllm_worker.TransplantWorker"
MODULES = ("ffn", "attn")
# Mixtures of experts run on vLLM (CPU build, tensor parallel 1 and 2) equal to the hook-based reference:
# the hooked sparse block's output is complete there, after the experts' tensor-parallel all-reduce
# (tests/test_vllm_families.py; README "vLLM engine").
MOE_RUN = frozenset({"Qwen3MoeForCausalLM", "Qwen2MoeForCausalLM", "OlmoeForCausalLM", "MixtralForCausalLM",
                     "GptOssForCausalLM"})
NOT_RUN = ("its sparse block has not been run on the vllm engine against the reference (the value a cell "
           "moves must be the block's output after the tensor-parallel reduction, not one rank's partial sum)")

# architectures vLLM has no model class of its own for: it runs them through its Transformers backend
# (other module names and tensor-parallel layout), which this engine has not been run on
VIA_TRANSFORMERS_BACKEND = frozenset({"Olmo2ForCausalLM"})


def is_moe(config: dict) -> bool:
    return experts_of(config)[0] > 0


def check_model(config: dict, tensor_parallel_size: int) -> None:
    """Refuse what cannot work, in one line, before vLLM starts: a family not run on this engine, a TP size
    that does not divide the heads or the experts' intermediate size, or exceeds the experts."""
    tp = tensor_parallel_size
    names = config.get("architectures") or ["?"]
    if isinstance(config.get("text_config"), dict):  # vLLM's multimodal classes name their layers their own way
        raise ValueError(f"the vllm engine does not run the multimodal {names[0]}: not run against the reference "
                         "on this engine (use engine: hf, which runs its language model)")
    if names[0] in VIA_TRANSFORMERS_BACKEND:
        raise ValueError(f"the vllm engine does not run {names[0]}: vLLM runs it through its Transformers backend, "
                         "whose modules this engine has not been run on (use engine: hf)")
    if is_moe(config):
        if names[0] not in MOE_RUN:
            raise ValueError(f"the vllm engine does not run {names[0]}: {NOT_RUN}; it runs the mixtures of experts "
                             f"{', '.join(sorted(MOE_RUN))} (use engine: hf)")
        experts = experts_of(config)[0]
        if tp > experts:
            raise ValueError(f"tensor parallel size {tp} exceeds the model's {experts} experts")
        width = config.get("moe_intermediate_size") or config.get("intermediate_size")
        if width and width % tp:
            raise ValueError(f"tensor parallel size {tp} does not divide the experts' intermediate size {width}")
    heads = config.get("num_attention_heads") or config.get("n_head")
    kv_heads = config.get("num_key_value_heads") or heads
    if heads and heads % tp:
        raise ValueError(f"tensor parallel size {tp} does not divide the model's "
                         f"{heads} attention heads")
    if kv_heads and kv_heads % tp and tp % kv_heads:
        raise ValueError(f"tensor parallel size {tp} and the model's {kv_heads} KV heads "
                         "do not divide one another")


# vLLM's CPU MoE kernel (CPUUnquantizedExperts) tiles its outputs by 32 and pads an expert's intermediate
# size per rank up to that, except under gpt-oss's swigluoai activation, which it does not pad
CPU_MOE_ALIGNMENT = 32
UNPADDED_ON_CPU = frozenset({"GptOssForCausalLM"})


def check_cpu_build(config: dict, tensor_parallel_size: int) -> None:
    """Refuse, before vLLM starts, a mixture of experts whose shape vLLM's CPU MoE kernel cannot run."""
    if not is_moe(config):
        return
    name, align = (config.get("architectures") or ["?"])[0], CPU_MOE_ALIGNMENT
    hidden = config.get("hidden_size")
    if hidden and hidden % align:
        raise ValueError(f"vLLM's CPU build cannot run {name} with hidden size {hidden}: its MoE kernel needs a "
                         f"multiple of {align}")
    width = config.get("moe_intermediate_size") or config.get("intermediate_size")
    if name in UNPADDED_ON_CPU and width and (width // tensor_parallel_size) % align:
        raise ValueError(f"vLLM's CPU build cannot run {name} at tensor parallel {tensor_parallel_size}: its MoE "
                         f"kernel needs the experts' intermediate size per rank ({width} / {tensor_parallel_size}) "
                         f"to be a multiple of {align} (the swigluoai activation is not padded)")


def check_ranks_agree(digests: list[dict[str, list[list[float]]]], tolerance: float = 1e-4) -> None:
    """Every rank holds the same captured donor values: a module output read below the tensor-parallel
    all-reduce would hold one rank's partial sum, different on each rank. `digests`: per rank,
    key -> per layer (sum, sum of squares) of the captured vector."""
    first = digests[0]
    for rank, other in enumerate(digests[1:], start=1):
        for key, layers in first.items():
            for layer, (a, b) in enumerate(zip(layers, other[key], strict=True)):
                norm2 = max(a[1], b[1], 1e-12)  # squared L2 norm: the scale of both digests
                if abs(a[0] - b[0]) > tolerance * math.sqrt(norm2) or abs(a[1] - b[1]) > tolerance * norm2:
                    raise RuntimeError(f"the donor value of layer {layer} differs between tensor-parallel ranks "
                                       f"0 and {rank} (sum {a[0]:.6g} vs {b[0]:.6g}): the hooked module's output "
                                       "is one rank's partial sum, not the reduced output; refusing the grid")


class VllmEngine:
    """One vLLM `LLM` with the transplant worker extension; loaded once per actor."""

    def __init__(self, model_path: str, dtype: str = "float32", tensor_parallel_size: int = 1,
                 max_model_len: int | None = None, seed: int = 0, revision: str | None = None,
                 trust_remote_code: bool = False):
        import json

        os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")  # V2 has no persistent input_batch
        if tensor_parallel_size == 1:  # engine core in this process: no spawn inside a Ray actor
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # two actors on one node must not fight
        import torch

        memory = {}
        if not torch.cuda.is_available():
            # vLLM's CPU backend reserves gpu_memory_utilization (0.92) of the machine's memory unless told
            # otherwise: a 4 GiB KV cache and half the memory leave room for the rest of the job
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
            memory = {"gpu_memory_utilization": 0.5}
        config_path = os.path.join(model_path, "config.json")
        local = os.path.exists(config_path)
        if local:  # refused before vLLM starts
            with open(config_path, encoding="utf-8") as f:
                self._check(json.load(f), tensor_parallel_size)
        from vllm import LLM

        from .models import DTYPES

        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        kwargs = {"max_model_len": max_model_len} if max_model_len else {}
        if tensor_parallel_size > 1:
            # ranks are processes of this node, on the GPUs this actor holds: under Ray, vLLM would otherwise
            # ask Ray for a placement group of GPUs the actor already holds, and wait forever. Inside a Ray
            # actor vLLM spawns them (never forks), and the caller needs a __main__ guard outside Ray.
            kwargs["distributed_executor_backend"] = "mp"
        self.llm = LLM(model=model_path, dtype=dtype, tensor_parallel_size=tensor_parallel_size, seed=seed,
                       revision=revision, trust_remote_code=trust_remote_code,
                       enforce_eager=True,  # compiled graphs bypass forward hooks
                       enable_prefix_caching=True, block_size=32,  # CPU attention: multiples of 32
                       max_logprobs=-1, worker_extension_cls=WORKER_EXTENSION, **memory, **kwargs)
        self.tensor_parallel_size = tensor_parallel_size
        if not local:  # a hub id: its config is known now, still before any work
            try:
                self._check(self.llm.llm_engine.model_config.hf_config.to_dict(), tensor_parallel_size)
            except ValueError:
                self.close()
                raise
        self.tokenizer = self.llm.get_tokenizer()
        self.model_config = self.llm.llm_engine.model_config
        self.num_layers = self.model_config.hf_config.num_hidden_layers
        self.context_length = self.model_config.max_model_len
        self.module = None
        self.last_cached_tokens: list[list[int]] = []  # per instance, per cell: prefix-cache hits

    @staticmethod
    def _check(config: dict, tensor_parallel_size: int) -> None:
        import torch

        from .architectures import lookup

        lookup(config)  # the worker hooks the modules the registry names
        check_model(config, tensor_parallel_size)
        if not torch.cuda.is_available():
            check_cpu_build(config, tensor_parallel_size)

    def close(self) -> None:
        """Stop vLLM's engine core (and its rank processes at tensor parallel > 1) now, not at exit."""
        self.llm.llm_engine.engine_core.shutdown()

    def hook_count(self) -> int:
        """The hooks left on the model, summed over every rank."""
        return sum(self.llm.collective_rpc("xtp_hook_count"))

    def fetch_donors(self, keys: list[str]) -> dict[str, list[list[float]]]:
        return self.llm.collective_rpc("xtp_fetch", args=(keys,))[0]

    def check_donors(self, keys: list[str]) -> None:
        """At tensor parallel > 1: refuse unless every rank captured the same (reduced) donor values."""
        if self.tensor_parallel_size > 1:
            check_ranks_agree(self.llm.collective_rpc("xtp_digest", args=(keys,)))

    def _generate(self, prompts: list[str], params: list) -> list:
        return self.llm.generate(prompts, params, use_tqdm=False)

    def capture(self, donors: list[str], keys: list[str]) -> None:
        from vllm import SamplingParams

        self._generate(donors, [SamplingParams(max_tokens=1, temperature=0.0, extra_args={"xtp": {"capture": k}})
                                for k in keys])

    def run_grid(self, donors: list[str], recipients: list[str], cells: list[Cell], module: str,
                 max_new_tokens: int = 20, cells_per_chunk: int | None = None,
                 option_token_ids: list[list[list[int]]] | None = None, keep_logits: bool = False,
                 memory_budget_mb: float | None = None) -> list[list[CellResult]]:
        """Vanilla + every cell per instance, as `hf.run_grid` (chunking and memory are vLLM's)."""
        from vllm import SamplingParams

        if module not in MODULES:
            raise ValueError(f"the vllm engine supports modules {', '.join(MODULES)}, not {module!r}")
        if len(donors) != len(recipients):
            raise ValueError("donors and recipients differ in length")
        keys = [f"donor-{uuid.uuid4().hex}" for _ in donors]
        all_cells = [VANILLA, *cells]
        self.llm.collective_rpc("xtp_install", args=(module,))
        try:
            self.capture(donors, keys)
            self.check_donors(keys)
            prompts, params = [], []
            for b, recipient in enumerate(recipients):
                wanted = sorted({t for ids in option_token_ids[b] for t in ids}) if option_token_ids else None
                for cell in all_cells:
                    plan = {} if cell == VANILLA else {"xtp": {"donor": keys[b], "source": cell.source_layer,
                                                               "target": cell.target_layer}}
                    extra = {"logprobs": -1} if keep_logits else {"logprob_token_ids": wanted} if wanted else {}
                    prompts.append(recipient)
                    params.append(SamplingParams(max_tokens=max(1, max_new_tokens), temperature=0.0,
                                                 extra_args=plan, **extra))
            outputs = self._generate(prompts, params)
        finally:
            self.llm.collective_rpc("xtp_remove")
            self.llm.collective_rpc("xtp_forget", args=(keys,))
        suspect = [k for k, out in enumerate(outputs) if (out.num_cached_tokens or 0) >= len(out.prompt_token_ids)]
        if suspect:
            # a prefix-cache hit reaching the patched position means the request was preempted and
            # resumed onto cached blocks that may hold another cell's patched KV
            raise RuntimeError(f"{len(suspect)} cell request(s) were preempted and resumed from the prefix cache "
                               "past their patched token; give vLLM a larger KV cache (VLLM_CPU_KVCACHE_SPACE on "
                               "CPU, gpu_memory_utilization on GPUs) or smaller batches")
        results, cached = [], []
        per_instance = len(all_cells)
        for b in range(len(recipients)):
            row, hits = [], []
            for c, cell in enumerate(all_cells):
                out = outputs[b * per_instance + c]
                completion = out.outputs[0]
                result = CellResult(cell)
                if max_new_tokens > 0:
                    result.token_ids = list(completion.token_ids)
                first = completion.logprobs[0] if completion.logprobs else None
                if keep_logits and first is not None:
                    result.logits = _dense(first, self.model_config.get_vocab_size())
                if option_token_ids is not None and first is not None:
                    result.option_logprobs = [_logsumexp([first[t].logprob for t in ids])
                                              for ids in option_token_ids[b]]
                row.append(result)
                hits.append(out.num_cached_tokens or 0)
            results.append(row)
            cached.append(hits)
        self.last_cached_tokens = cached
        return results


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return top
    return top + math.log(sum(math.exp(v - top) for v in values))


def _dense(logprobs: dict, vocab: int):
    import torch

    out = torch.full((vocab,), -math.inf)
    for token, entry in logprobs.items():
        out[token] = entry.logprob
    return out

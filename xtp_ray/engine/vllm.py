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
actor's GPUs and every rank applies the same patch.

`logits` of a CellResult (keep_logits) are the next-token log-probabilities at the
patched position (`logprobs=-1`): the HF engine's logits up to a constant per row.
"""
from __future__ import annotations

import math
import os
import uuid

from ..cells import VANILLA, Cell
from .hf import CellResult

WORKER_EXTENSION = "xtp_ray.engine.vllm_worker.TransplantWorker"
MODULES = ("ffn", "attn")
MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size")


def check_model(config: dict, tensor_parallel_size: int) -> None:
    """Refuse what cannot work before vLLM starts: MoE models, a TP size that does not divide the heads."""
    if any(config.get(key) for key in MOE_KEYS):
        raise ValueError(f"the vllm engine supports dense models only; {config.get('architectures')} is a "
                         "mixture of experts (its MLP output is not one full-size tensor per rank)")
    heads = config.get("num_attention_heads") or config.get("n_head")
    kv_heads = config.get("num_key_value_heads") or heads
    if heads and heads % tensor_parallel_size:
        raise ValueError(f"tensor parallel size {tensor_parallel_size} does not divide the model's "
                         f"{heads} attention heads")
    if kv_heads and kv_heads % tensor_parallel_size and tensor_parallel_size % kv_heads:
        raise ValueError(f"tensor parallel size {tensor_parallel_size} and the model's {kv_heads} KV heads "
                         "do not divide one another")


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
        if os.path.exists(config_path):
            with open(config_path, encoding="utf-8") as f:
                check_model(json.load(f), tensor_parallel_size)
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
        self.tokenizer = self.llm.get_tokenizer()
        self.model_config = self.llm.llm_engine.model_config
        self.num_layers = self.model_config.hf_config.num_hidden_layers
        self.context_length = self.model_config.max_model_len
        self.module = None
        self.last_cached_tokens: list[list[int]] = []  # per instance, per cell: prefix-cache hits

    def close(self) -> None:
        """Stop vLLM's engine core (and its rank processes at tensor parallel > 1) now, not at exit."""
        self.llm.llm_engine.engine_core.shutdown()

    def hook_count(self) -> int:
        """The hooks left on the model, summed over every rank."""
        return sum(self.llm.collective_rpc("xtp_hook_count"))

    def fetch_donors(self, keys: list[str]) -> dict[str, list[list[float]]]:
        return self.llm.collective_rpc("xtp_fetch", args=(keys,))[0]

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

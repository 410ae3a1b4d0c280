"""Does one actor's model fit its GPUs? Checked before any actor starts, from the config alone.

The need per GPU is `engine.footprint.need_per_gpu` (weights / ranks + the engine's own
memory for the configured batch and tokens); the GPU memory is `gpu_memory_gb` where the
user gives it, else what the nodes that can hold an actor say (`placement.gpu_memory_gb`:
live nodes' and the autoscaler's node types' `accelerator_type`). What cannot be known is
logged, not guessed.
"""
from __future__ import annotations

import logging

from .config import RunConfig, tensor_parallel_size

log = logging.getLogger("xtp_ray")

# GPU memory by Ray's accelerator_type (decimal GB as sold). A100 comes in 40 and 80 GB and Ray
# names both "A100": the smaller is assumed, and gpu_memory_gb overrides.
GPU_MEMORY_GB = {"V100": 16, "P100": 16, "T4": 16, "P4": 8, "K80": 12, "A10G": 24, "L4": 24, "L40S": 48,
                 "A100": 40, "A100-40G": 40, "A100-80G": 80, "H100": 80, "H200": 141, "H20": 96, "B200": 180,
                 "B300": 288, "GB200": 186, "GB300": 288, "RTX-PRO-6000": 96}


def actor_need(config: RunConfig, model_config: dict):
    """`footprint.Need` of one actor's GPUs for this run's engine, dtype, batch and tokens (ValueError where
    the checkpoint's quantization is not modelled)."""
    from ..engine.footprint import need_per_gpu

    ranks = tensor_parallel_size(config) if config.engine == "vllm" else 1
    new_tokens = config.new_tokens
    context = config.max_prompt_tokens + new_tokens if config.max_prompt_tokens else None
    return need_per_gpu(model_config, config.engine, config.dtype, ranks, config.batch_size, context, new_tokens)


def not_checked(reason: str) -> dict:
    """A memory fit that was not checked, and why."""
    return {"verdict": "not checked", "line": f"memory fit not checked: {reason}", "reason": reason}


def assess(config: RunConfig, need, gpu_gb: float, where: str) -> dict:
    """The fit of `need` on a GPU of `gpu_gb`, structured: verdict ("fits" or "refused"), the need per GPU
    and its parts, the GPU's memory and the share of it the engine may fill, the remedy where refused, and
    the whole as one line (`line`)."""
    from ..engine.footprint import CUDA_CONTEXT_BYTES, GB

    usable = need.usable_share * gpu_gb * GB - CUDA_CONTEXT_BYTES
    stored = f"{config.dtype} weights" if need.stored in ("", config.dtype) else f"weights ({need.stored})"
    active = f" ({need.active / 1e9:.2f}B active per token)" if need.active and need.active != need.parameters else ""
    size = (f"model {config.model}: {need.parameters / 1e9:.2f}B parameters{active}, "
            f"{need.weights * need.gpus / GB:.1f} GB of {stored}")
    per_gpu = (f"{need.total / GB:.1f} GB per GPU ({need.weights / GB:.1f} GB weights over {need.gpus} GPU(s) + "
               f"{need.engine / GB:.1f} GB for the engine: {need.basis})")
    fits = need.fits(gpu_gb * GB)
    remedy = None if fits else (
        "raise num_gpus_per_actor (the vllm engine runs tensor parallel over them), use larger GPUs or "
        "lower max_prompt_tokens" if config.engine == "vllm" else
        "lower batch_size or max_prompt_tokens, use larger GPUs, or engine: vllm over several GPUs")
    line = (f"{size}; one actor needs {per_gpu}; fits {gpu_gb:g} GB GPUs ({where})" if fits else
            f"{size}; one actor needs {per_gpu}, more than the {usable / GB:.1f} GB usable of a {gpu_gb:g} GB GPU "
            f"({where}): {remedy}")
    return {"verdict": "fits" if fits else "refused", "line": line,
            "need_per_gpu_gb": need.total / GB, "weights_per_gpu_gb": need.weights / GB,
            "engine_per_gpu_gb": need.engine / GB, "gpus": need.gpus, "gpu_memory_gb": gpu_gb, "where": where,
            "usable_share": need.usable_share, "usable_gb": usable / GB, "cuda_context_gb": CUDA_CONTEXT_BYTES / GB,
            "parameters": need.parameters, "active_parameters": need.active or need.parameters,
            "weights_gb": need.weights * need.gpus / GB, "weights_stored": need.stored or config.dtype,
            "basis": need.basis, "remedy": remedy}


def assess_fit(config: RunConfig, model_config: dict | None, gpu_gb: float | None, where: str) -> dict:
    """`assess` of one actor on GPUs of `gpu_gb`, or why it was not checked (`not_checked`)."""
    if model_config is None:
        return not_checked("a tiny model")
    if gpu_gb is None:
        return not_checked("the GPUs' memory is unknown (give gpu_memory_gb)")
    try:
        need = actor_need(config, model_config)
    except ValueError as exc:  # a quantization whose sizes are not modelled: not guessed
        return not_checked(str(exc))
    return assess(config, need, gpu_gb, where)


def check_fit(config: RunConfig, model_config: dict | None, gpu_gb: float | None, where: str) -> str:
    """The fit of one actor on GPUs of `gpu_gb` as a line; ValueError (that line) where it is refused."""
    fit = assess_fit(config, model_config, gpu_gb, where)
    if fit["verdict"] == "refused":
        raise ValueError(fit["line"])
    return fit["line"]


def assess_on_cluster(config: RunConfig, model_config: dict | None) -> dict:
    """`assess_fit` of one actor on the smallest GPU of the nodes and node types that can hold it."""
    from .placement import gpu_memory_gb

    gb, where = gpu_memory_gb(config.num_cpus_per_actor, config.num_gpus_per_actor, GPU_MEMORY_GB)
    return assess_fit(config, model_config, gb, where) if gb else not_checked(f"{where} (give gpu_memory_gb)")


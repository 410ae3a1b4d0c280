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
    """`footprint.Need` of one actor's GPUs for this run's engine, dtype, batch and tokens."""
    from ..engine.footprint import need_per_gpu

    ranks = tensor_parallel_size(config) if config.engine == "vllm" else 1
    new_tokens = config.max_new_tokens if config.scoring == "generate" else 0
    context = config.max_prompt_tokens + new_tokens if config.max_prompt_tokens else None
    return need_per_gpu(model_config, config.engine, config.dtype, ranks, config.batch_size, context, new_tokens)


def refuse_unless_fits(config: RunConfig, need, gpu_gb: float, where: str) -> str:
    """ValueError (one line) when `need` exceeds a GPU of `gpu_gb`; else how it fits, for the log."""
    from ..engine.footprint import CUDA_CONTEXT_BYTES, GB

    usable = need.usable_share * gpu_gb * GB - CUDA_CONTEXT_BYTES
    size = (f"model {config.model}: {need.parameters / 1e9:.2f}B parameters, "
            f"{need.weights * need.gpus / GB:.1f} GB of {config.dtype} weights")
    per_gpu = (f"{need.total / GB:.1f} GB per GPU ({need.weights / GB:.1f} GB weights over {need.gpus} GPU(s) + "
               f"{need.engine / GB:.1f} GB for the engine: {need.basis})")
    if need.fits(gpu_gb * GB):
        return f"{size}; one actor needs {per_gpu}; fits {gpu_gb:g} GB GPUs ({where})"
    remedy = ("raise num_gpus_per_actor (the vllm engine runs tensor parallel over them), use larger GPUs or "
              "lower max_prompt_tokens" if config.engine == "vllm" else
              "lower batch_size or max_prompt_tokens, use larger GPUs, or engine: vllm over several GPUs")
    raise ValueError(f"{size}; one actor needs {per_gpu}, more than the {usable / GB:.1f} GB usable of a "
                     f"{gpu_gb:g} GB GPU ({where}): {remedy}")


def check_fit(config: RunConfig, model_config: dict | None, gpu_gb: float | None, where: str) -> str:
    """The fit of one actor on GPUs of `gpu_gb` (refused with one line), or why it was not checked."""
    if model_config is None:
        return "memory fit not checked: a tiny model"
    if gpu_gb is None:
        return "memory fit not checked: the GPUs' memory is unknown (give gpu_memory_gb)"
    return refuse_unless_fits(config, actor_need(config, model_config), gpu_gb, where)


def fit_on_cluster(config: RunConfig, model_config: dict | None) -> str:
    """The fit of one actor on the smallest GPU of the nodes and node types that can hold it (refused with
    one line, ValueError), or why it was not checked."""
    from .placement import gpu_memory_gb

    gb, where = gpu_memory_gb(config.num_cpus_per_actor, config.num_gpus_per_actor, GPU_MEMORY_GB)
    return check_fit(config, model_config, gb, where) if gb else f"memory fit not checked: {where} (give gpu_memory_gb)"

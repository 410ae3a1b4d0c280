"""Which engine runs the grid: `hf` (transformers, `hf.py`) or `vllm` (`vllm.py`).

Both follow one contract (`run_grid` with the same arguments, per instance
[vanilla, *cells] CellResults, `tokenizer`, `num_layers`); the pipeline, scoring and
aggregation never ask which one ran. An actor loads its engine once.
"""
from __future__ import annotations

ENGINES = ("hf", "vllm")


def check_engine(name: str) -> None:
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")


def load_engine(name: str, model_path: str, dtype: str = "float32", attn_implementation: str | None = None,
                gpus: float = 0, trust_remote_code: bool = False, revision: str | None = None,
                max_model_len: int | None = None, device: str | None = None,
                tensor_parallel_size: int | None = None):
    """An engine over a `save_pretrained` directory (or a hub id where a hub is reachable).

    gpus: the GPUs this actor holds. vllm runs tensor parallel over them (tensor_parallel_size: as
    many ranks, default one per GPU, at least 1; on a CPU build, ranks are processes). hf runs on one
    device: its multi-device path has never run, so more than one GPU is refused.
    device: where hf puts the model (default: cuda where available); an actor passes what Ray gave it.
    """
    check_engine(name)
    if name == "hf" and (int(gpus) > 1 or (tensor_parallel_size or 1) > 1):
        raise ValueError("the hf engine runs on one device; for models beyond one GPU use the vllm engine "
                         "(tensor parallel over the actor's GPUs)")
    if trust_remote_code:
        import logging

        logging.getLogger("xtp_ray").warning("trust_remote_code is on: running Python code that ships with the "
                                             "model %s", model_path)
    if name == "vllm":
        from .vllm import VllmEngine

        return VllmEngine(model_path, dtype, tensor_parallel_size=tensor_parallel_size or max(1, int(gpus)),
                          max_model_len=max_model_len,
                          revision=revision, trust_remote_code=trust_remote_code)
    from .hf import HFEngine
    from .models import load_model

    model, tokenizer = load_model(model_path, dtype, attn_implementation, device=device,
                                  trust_remote_code=trust_remote_code, revision=revision)
    return HFEngine(model, tokenizer)

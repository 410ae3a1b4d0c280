"""Loading transplant-ready models, and tiny ones built from configs for tests/defaults."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..names import DTYPE_NAMES
from .architectures import lookup

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


def load_model(name_or_path: str, dtype: str = "float32", attn_implementation: str | None = None,
               device: str | None = None, trust_remote_code: bool = False, revision: str | None = None):
    """(model, tokenizer) from a `save_pretrained` directory or a hub id (where a hub is reachable).

    Weights load from safetensors only. Attention defaults to eager for float32 so the
    engine and the reference agree to 1e-4; sdpa otherwise. One device: the engine keeps its
    per-layer state on the model's device (no `device_map="auto"`; see README "Big models").
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if attn_implementation is None:
        attn_implementation = "eager" if dtype == "float32" else "sdpa"
    local = Path(name_or_path).is_dir()
    config = transformers.AutoConfig.from_pretrained(name_or_path, revision=revision,
                                                     trust_remote_code=trust_remote_code)
    lookup(config)  # fail fast, before loading any weights
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(
        name_or_path, revision=revision, dtype=DTYPES[dtype], attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code, use_safetensors=True,
        local_files_only=local or os.environ.get("HF_HUB_OFFLINE") == "1",
    )
    model = model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision,
                                              trust_remote_code=trust_remote_code)
    return model, tokenizer

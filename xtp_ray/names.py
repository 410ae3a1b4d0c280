"""Names the command line and the config accept, importable without torch or pyarrow."""
from __future__ import annotations

MODULES = ("ffn", "attn", "attn_ref")  # what a cell replaces (architectures.submodule)
DTYPE_NAMES = ("float32", "bfloat16", "float16")  # models.DTYPES maps them to torch dtypes

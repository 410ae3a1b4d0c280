"""Names the command line, the config and the data may use, importable without torch or pyarrow.

A task, split, language or run id from any source becomes part of a path (shard and
figure names, run directories), so it must match NAME before it is used: letters,
digits, '.', '_' and '-', starting with a letter or digit (so never '..', '/' or '').
"""
from __future__ import annotations

import re

MODULES = ("ffn", "attn", "attn_ref")  # what a cell replaces (architectures.submodule)
DTYPE_NAMES = ("float32", "bfloat16", "float16")  # models.DTYPES maps them to torch dtypes
OWN_KERNELS = ("fused", "matmul")  # how the rows attend to their own tokens (cascade.own_part)
DEFAULT_OWN_KERNEL = "fused"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def is_name(value) -> bool:
    return isinstance(value, str) and NAME.fullmatch(value) is not None


def check_name(kind: str, value) -> str:
    """`value` if it is a safe name, else ValueError naming what it is (kind: 'run id', 'language', ...)."""
    if not is_name(value):
        raise ValueError(f"{kind} {value!r}: only letters, digits, '.', '_' and '-', starting with a letter or "
                         "digit (it becomes part of a path)")
    return value


def check_positive(**flags) -> None:
    """ValueError naming the first flag (`--a-flag`) given a value below 1; None means not given."""
    for flag, value in flags.items():
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")

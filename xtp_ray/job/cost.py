"""What an instance costs, predicted on the driver from its prompts and the run's shape.

The engines are linear in the cells (SPEC 6): per instance one donor and one recipient
prefill, then per cell (vanilla included, per module) one token at the patched position
and `new_tokens` decode steps, each through the layers and attending to the prefix:

    prefill  = 2 N (Td + Tr) + 2 L d (Td^2 + Tr^2)                 FLOPs
    per cell = (1 + new) 2 N + 4 L d ((1 + new) P + new^2 / 2)     FLOPs   (P = Tr)

N the parameters a token computes through (all of a dense model's; of a mixture of experts
the active ones: its top k routed experts per layer and everything else, `footprint.ParameterCount`),
L layers, d the hidden size; prompt lengths T are tokenized where a tokenizer
is at hand, else estimated from characters (`estimate_tokens`). Seconds are FLOPs times
two coefficients measured on a GPU (`CALIBRATION`): the score phase (prefill and one token
per cell) and the decode steps. It is a model: row sharing, rows that stop early and
chunking make real costs lower and less even; `xtp bench --suite schedule` measures how far.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from ..cells import parse_cells

# `xtp bench --suite gpu` on an NVIDIA H200 (bench/gpu-h200-2026-11-29-s3-run1.json): the Llama-2-7B
# shape in bfloat16, 2 instances of 130-token prompts, the full grid (1,025 cells with vanilla).
CALIBRATION = {"device": "NVIDIA H200", "source": "bench/gpu-h200-2026-11-29-s3-run1.json", "engine": "hf",
               "parameters": 6_738_415_616, "layers": 32, "hidden": 4096, "prompt_tokens": 130, "cells": 1025,
               "new_tokens": 20, "score_s_per_instance": 0.0864970619999994,
               "generate_s_per_instance": 0.8567725519999989}


@dataclass(frozen=True)
class Shape:
    """What an instance's cost depends on besides its prompts."""
    parameters: int
    layers: int
    hidden: int
    cells: int  # per instance, vanilla included, summed over the modules run
    new_tokens: int  # 0: option scoring

    @classmethod
    def of_run(cls, config, model_config: dict, parameters: int, task: str | None = None) -> Shape:
        """The shape of `config`'s run on a model (per task where cells are the coarse setting)."""
        from ..engine.footprint import dims
        from .config import coarse_setting

        d = dims(model_config)
        if config.cells == "coarse":
            cells = 2 if task is None else len(parse_cells(coarse_setting(task)[1], d["layers"])) + 1
        else:
            cells = (len(parse_cells(config.cells, d["layers"])) + 1) * len(config.modules)
        new = config.max_new_tokens if config.scoring == "generate" else 0
        return cls(parameters, d["layers"], d["hidden"], cells, new)


def estimate_tokens(text: str) -> int:
    """Tokens of a prompt without its tokenizer: ~4 ASCII characters a token (English BPE), one a
    token elsewhere (CJK, Devanagari, Thai: a character or more per token), plus BOS."""
    ascii_chars = sum(1 for ch in text if ord(ch) < 128)
    return 1 + (ascii_chars + 3) // 4 + (len(text) - ascii_chars)


def score_flops(donor_tokens: int, recipient_tokens: int, shape: Shape) -> float:
    """The prefills and one token per cell at the patched position."""
    n, layers, d = shape.parameters, shape.layers, shape.hidden
    prefill = 2 * n * (donor_tokens + recipient_tokens) + 2 * layers * d * (donor_tokens ** 2 + recipient_tokens ** 2)
    return prefill + shape.cells * (2 * n + 4 * layers * d * recipient_tokens)


def decode_flops(recipient_tokens: int, shape: Shape) -> float:
    """The decode steps of every cell."""
    new = shape.new_tokens
    return shape.cells * (new * 2 * shape.parameters
                          + 4 * shape.layers * shape.hidden * (new * recipient_tokens + new * new / 2))


@functools.cache  # constants: worked out once, not once per instance
def _coefficients() -> tuple[float, float]:
    """Seconds per FLOP of the score phase and of decoding, from `CALIBRATION`."""
    c = CALIBRATION
    shape = Shape(c["parameters"], c["layers"], c["hidden"], c["cells"], c["new_tokens"])
    k_score = c["score_s_per_instance"] / score_flops(c["prompt_tokens"], c["prompt_tokens"], shape)
    k_decode = (c["generate_s_per_instance"] - c["score_s_per_instance"]) / decode_flops(c["prompt_tokens"], shape)
    return k_score, k_decode


def instance_seconds(donor_tokens: int, recipient_tokens: int, shape: Shape) -> float:
    """Predicted seconds of one instance on one actor (as on one GPU of the calibration's device)."""
    k_score, k_decode = _coefficients()
    return (k_score * score_flops(donor_tokens, recipient_tokens, shape)
            + k_decode * decode_flops(recipient_tokens, shape))


def instance_costs(instances, shape_of, tokens=estimate_tokens) -> list[float]:
    """Predicted seconds of each instance; shape_of(task) -> Shape."""
    return [instance_seconds(tokens(i.donor), tokens(i.recipient), shape_of(i.task)) for i in instances]

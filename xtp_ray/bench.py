"""`xtp bench`: the reference path and the fast engine, side by side in one run.

Same tiny model, same instances, same cells. Every cell is compared; the last line
prints the speedup and how many cells agree.
"""
from __future__ import annotations

import json
import time
from importlib import resources

import torch

from . import engine, reference
from .cells import parse_cells
from .scoring import option_token_ids
from .tiny import build_tiny_model, tokenizer_corpus, train_tokenizer

LOGIT_TOLERANCE = 1e-4


def _bench_prompts(tokenizer, instances: int, prompt_tokens: int) -> tuple[list[str], list[str]]:
    """Real XNLI sample prompts (donor en, recipient sw), cut to ~prompt_tokens tokens."""
    root = resources.files("xtp_ray") / "data" / "xtransplant_release" / "XNLI" / "XNLI_sample" / "split"

    def cut(lang):
        lines = (root / f"{lang}.json").read_text(encoding="utf-8").splitlines()[:instances]
        return [tokenizer.decode(tokenizer(json.loads(line), add_special_tokens=False).input_ids[-prompt_tokens + 1:])
                for line in lines]

    return cut("en"), cut("sw")


def run_bench(mode: str = "generate", architecture: str = "LlamaForCausalLM", num_layers: int = 16,
              hidden: int = 256, prompt_tokens: int = 128, instances: int = 2, cells: str = "full",
              module: str = "ffn", max_new_tokens: int = 20, cells_per_chunk: int | None = None,
              threads: int | None = None, log=print) -> dict:
    if mode not in ("generate", "score"):
        raise ValueError("mode is generate or score")
    if threads:
        torch.set_num_threads(threads)
    tokenizer = train_tokenizer(tokenizer_corpus(), 512)
    model = build_tiny_model(architecture, len(tokenizer), num_layers=num_layers, hidden=hidden,
                             heads=max(1, hidden // 64), kv_heads=max(1, hidden // 128),
                             initializer_range=0.1)
    donors, recipients = _bench_prompts(tokenizer, instances, prompt_tokens)
    grid = parse_cells(cells, num_layers)
    new_tokens = max_new_tokens if mode == "generate" else 0
    options = [option_token_ids(tokenizer, ["1", "2", "3"])] * len(recipients) if mode == "score" else None
    log(f"bench {mode}: {architecture}, {num_layers} layers, hidden {hidden}, {len(recipients)} instances, "
        f"~{prompt_tokens}-token prompts, {len(grid)} cells + vanilla, module {module}, "
        f"threads {torch.get_num_threads()}")

    # Warm both paths up once (first calls pay one-off allocator and kernel set-up).
    engine.run_grid(model, tokenizer, donors[:1], recipients[:1], grid[:1], module, min(new_tokens, 2))
    reference.run_grid(model, tokenizer, donors[:1], recipients[:1], grid[:1], module, min(new_tokens, 2))

    # The fast path takes well under a second when scoring, where one scheduler hiccup
    # shows; it runs three times and the median counts. The reference's one long run
    # already averages over every cell.
    fast_times = []
    for _ in range(3):
        start = time.perf_counter()
        fast = engine.run_grid(model, tokenizer, donors, recipients, grid, module, new_tokens,
                               cells_per_chunk=cells_per_chunk, option_token_ids=options, keep_logits=True)
        fast_times.append(time.perf_counter() - start)
    fast_s = sorted(fast_times)[1]
    log(f"fast engine: {fast_s:.2f} s (median of {', '.join(f'{t:.2f}' for t in fast_times)})")
    start = time.perf_counter()
    slow = reference.run_grid(model, tokenizer, donors, recipients, grid, module, new_tokens,
                              option_token_ids=options)
    slow_s = time.perf_counter() - start
    log(f"reference:   {slow_s:.2f} s")

    total = identical = 0
    max_logit_diff = 0.0
    for fast_row, slow_row in zip(fast, slow):
        for f, s in zip(fast_row, slow_row):
            total += 1
            diff = (f.logits - s.logits).abs().max().item()
            max_logit_diff = max(max_logit_diff, diff)
            same = f.token_ids == s.token_ids if mode == "generate" else (
                max(range(3), key=lambda k: f.option_logprobs[k]) == max(range(3), key=lambda k: s.option_logprobs[k]))
            identical += bool(same and diff <= LOGIT_TOLERANCE)
    result = {"mode": mode, "fast_s": fast_s, "reference_s": slow_s, "speedup": slow_s / fast_s,
              "cells": total, "identical": identical, "max_logit_diff": max_logit_diff}
    log(f"max next-token logit difference {max_logit_diff:.2e} (tolerance {LOGIT_TOLERANCE:g})")
    log(f"fast/reference speedup {slow_s / fast_s:.1f}x, cells {identical}/{total} identical")
    return result

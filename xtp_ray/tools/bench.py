"""`xtp bench`: the fast engine, a batched peer and the reference, side by side in one run.

Same tiny model, same instances, same cells, every cell compared:
- fast: `engine.hf.run_grid` (shared prefix, cells as rows, cascade attention);
- peer: what a practitioner writes with plain hooks (TransformerLens / nnsight style):
  one donor forward per instance capturing every layer, then all cells of the
  instance as rows of ONE batched hooked `generate` over the full recipient prompt,
  each row patched at its last prompt token in the prefill only (scoring: one
  batched forward);
- reference: `reference.run_grid`, one hooked `generate` per cell.
The fast path runs three times (median counts, range printed); peer and reference once.
"""
from __future__ import annotations

import json
import statistics
import time
from importlib import resources

import torch

from ..cells import VANILLA, parse_cells
from ..engine import hf, reference
from ..engine.capture import replace_rows
from ..engine.contract import CellResult, eos_ids, record_next_token, trim_at_stop
from ..engine.hf import capture_donors, cell_patches
from ..engine.sharing import PLANNING
from ..engine.tiny import build_tiny_model, tokenizer_corpus, train_tokenizer
from ..names import DEFAULT_OWN_KERNEL
from ..scoring import option_token_ids

LOGIT_TOLERANCE = 1e-4

# Model shapes by name (`--shape`): the bench builds them from a config with random weights.
SHAPES = {
    "llama2-7b": {"architecture": "LlamaForCausalLM", "layers": 32, "hidden": 4096, "heads": 32, "kv_heads": 32,
                  "intermediate": 11008, "vocab": 32000},
}


def build_bench_model(architecture: str = "LlamaForCausalLM", layers: int = 16, hidden: int = 256,
                      heads: int | None = None, kv_heads: int | None = None, intermediate: int | None = None,
                      vocab: int | None = None, dtype: str = "float32", device: str = "cpu"):
    """(model, tokenizer): random weights built on `device` in `dtype`, with the local 512-token tokenizer.

    Default heads hidden/64, KV heads hidden/128, intermediate 2 x hidden, the tokenizer's vocabulary
    (a larger `vocab` only widens the embedding and the head). fp32 runs eager attention (exactness
    against the reference), other dtypes sdpa, as `models.load_model` does. Random weights at a
    realistic width use HF's initializer range (0.02); the tiny widths a larger one (0.1), so that
    cells differ from each other.
    """
    from ..engine.models import DTYPES

    for name, value in (("layers", layers), ("hidden", hidden), ("heads", heads), ("kv_heads", kv_heads),
                        ("intermediate", intermediate), ("vocab", vocab)):
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r} unknown; choose one of {', '.join(DTYPES)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: torch sees no CUDA device here")
    tokenizer = train_tokenizer(tokenizer_corpus(), 512)
    heads = heads or max(1, hidden // 64)
    kv_heads = kv_heads or max(1, hidden // 128)
    if hidden % heads or heads % kv_heads:
        raise ValueError(f"hidden {hidden} must split into {heads} heads, and those into {kv_heads} KV heads")
    overrides = {}
    if architecture != "GPT2LMHeadModel":
        overrides["intermediate_size"] = intermediate or 2 * hidden
    model = build_tiny_model(architecture, max(vocab or 0, len(tokenizer)), num_layers=layers, hidden=hidden,
                             heads=heads, kv_heads=kv_heads, initializer_range=0.02 if hidden >= 1024 else 0.1,
                             dtype=DTYPES[dtype], device=device,
                             attn_implementation="eager" if dtype == "float32" else "sdpa", **overrides)
    return model, tokenizer


def _bench_prompts(tokenizer, instances: int, prompt_tokens: int) -> tuple[list[str], list[str]]:
    """Real XNLI sample prompts (donor en, recipient sw), cut to ~prompt_tokens tokens."""
    root = resources.files("xtp_ray") / "data" / "xtransplant_release" / "XNLI" / "XNLI_sample" / "split"

    def cut(lang):
        lines = (root / f"{lang}.json").read_text(encoding="utf-8").splitlines()[:instances]
        out = []
        for line in lines:
            ids = tokenizer(json.loads(line), add_special_tokens=False).input_ids
            while len(ids) < prompt_tokens:  # longer prompts than the sample holds: repeat it
                ids = ids + ids
            out.append(tokenizer.decode(ids[-prompt_tokens + 1:]))
        return out

    return cut("en"), cut("sw")


@torch.no_grad()
def run_peer(model, tokenizer, donors, recipients, cells, module, max_new_tokens=20, option_token_ids=None):
    """The batched plain-hooks baseline (see the module docstring); same contract as run_grid."""
    all_cells = [VANILLA, *cells]
    stop = sorted(eos_ids(model, tokenizer))
    out = []
    for b, (donor, recipient) in enumerate(zip(donors, recipients)):
        values = capture_donors(model, tokenizer, [donor], module)[0]  # [L, d]
        ids = tokenizer(recipient, return_tensors="pt").input_ids.to(model.device)  # [1, T]
        rows = ids.expand(len(all_cells), -1)  # [R, T]: every cell a row over the full prompt
        patches = cell_patches(all_cells, values[None])  # one instance: row r is cell r
        results = [CellResult(cell) for cell in all_cells]
        with replace_rows(model, module, patches, first_call_only=True):
            if max_new_tokens > 0:
                pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop or [0])[0]
                gen = model.generate(rows, attention_mask=torch.ones_like(rows), do_sample=False,
                                     max_new_tokens=max_new_tokens, eos_token_id=stop or None, pad_token_id=pad,
                                     output_logits=True, return_dict_in_generate=True, num_beams=1,
                                     repetition_penalty=None, temperature=None, top_p=None, top_k=None)
                logits = gen.logits[0]  # [R, V] the patched position
                for r, result in enumerate(results):
                    result.token_ids = trim_at_stop(gen.sequences[r, ids.shape[1]:].tolist(), stop)
            else:
                logits = model(input_ids=rows, use_cache=False).logits[:, -1]  # [R, V]
        record_next_token(results, logits, option_token_ids[b] if option_token_ids else None)
        out.append(results)
    return out


def compare(fast, other, mode: str, strict: bool = True) -> tuple[int, int, float]:
    """(identical cells, cells, max next-token logit (strict) or log-prob difference).

    A cell is identical when it decides the same (greedy tokens, or the chosen option)
    and, with strict (the hf engine's exactness contract in fp32), its next-token logits are
    within LOGIT_TOLERANCE everywhere; vllm and 16-bit runs are held to the same decisions only.
    """
    total = identical = 0
    max_diff = 0.0
    for fast_row, other_row in zip(fast, other):
        for f, s in zip(fast_row, other_row):
            total += 1
            if strict:  # the hf engine: raw next-token logits
                diff = (f.logits - s.logits).abs().max().item()
            else:  # the vllm engine reports log-probs: the logits up to a constant per row
                diff = (torch.log_softmax(f.logits, -1) - torch.log_softmax(s.logits, -1)).abs().max().item()
            max_diff = max(max_diff, diff)
            if mode == "generate":
                same = f.token_ids == s.token_ids
            else:
                same = max(range(len(f.option_logprobs)), key=f.option_logprobs.__getitem__) == \
                    max(range(len(s.option_logprobs)), key=s.option_logprobs.__getitem__)
            identical += bool(same and (diff <= LOGIT_TOLERANCE or not strict))
    return identical, total, max_diff


def synchronize() -> None:
    """Wait for queued GPU work, so that a wall-clock span covers it (no-op without CUDA)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _timed(fn):
    synchronize()
    start = time.perf_counter()
    result = fn()
    synchronize()
    return result, time.perf_counter() - start


def check_sizes(instances: int, prompt_tokens: int, max_new_tokens: int) -> None:
    for flag, value, least in (("--instances", instances, 1), ("--prompt-tokens", prompt_tokens, 2),
                               ("--max-new-tokens", max_new_tokens, 0)):
        if value < least:
            raise ValueError(f"{flag} must be at least {least}, got {value}")


def run_bench(mode: str = "generate", architecture: str = "LlamaForCausalLM", num_layers: int = 16,
              hidden: int = 256, prompt_tokens: int = 128, instances: int = 2, cells: str = "full",
              module: str = "ffn", max_new_tokens: int = 20, cells_per_chunk: int | None = None,
              threads: int | None = None, peer: bool = True, engine_name: str = "hf", share: bool = True,
              log=print, heads: int | None = None, kv_heads: int | None = None, intermediate: int | None = None,
              vocab: int | None = None, dtype: str = "float32", device: str = "cpu", reference_run: bool = True,
              nnsight: bool = True, own_kernel: str = DEFAULT_OWN_KERNEL, speculate: bool | None = None) -> dict:
    if mode not in ("generate", "score"):
        raise ValueError("mode is generate or score")
    check_sizes(instances, prompt_tokens, max_new_tokens)
    if threads:
        torch.set_num_threads(threads)
    model, tokenizer = build_bench_model(architecture, num_layers, hidden, heads, kv_heads, intermediate, vocab,
                                         dtype, device)
    donors, recipients = _bench_prompts(tokenizer, instances, prompt_tokens)
    grid = parse_cells(cells, num_layers)
    new_tokens = max_new_tokens if mode == "generate" else 0
    options = [option_token_ids(tokenizer, ["1", "2", "3"])] * len(recipients) if mode == "score" else None
    log(f"bench {mode}: {architecture}, {num_layers} layers, hidden {hidden}, {len(recipients)} instances, "
        f"~{prompt_tokens}-token prompts, {len(grid)} cells + vanilla, module {module}, {dtype} on {device}, "
        f"threads {torch.get_num_threads()}" + ("" if share else ", no row sharing")
        + ("" if own_kernel == DEFAULT_OWN_KERNEL else f", own-token attention {own_kernel}")
        + ("" if speculate is None else f", decode forwards {'ahead' if speculate else 'in turn'}"))
    strict = engine_name == "hf" and dtype == "float32"

    fast_engine = hf.HFEngine(model, tokenizer, share=share, own_kernel=own_kernel, speculate=speculate)
    tested = fast_engine if engine_name == "hf" else _vllm_twin(model, tokenizer)
    # Warm every path up once (first calls pay one-off allocator and kernel set-up).
    tested.run_grid(donors[:1], recipients[:1], grid[:1], module, min(new_tokens, 2))
    if reference_run:
        reference.run_grid(model, tokenizer, donors[:1], recipients[:1], grid[:1], module, min(new_tokens, 2))

    name = "fast" if engine_name == "hf" else engine_name
    fast_times = []
    for _ in range(3):
        fast, seconds = _timed(lambda: tested.run_grid(
            donors, recipients, grid, module, new_tokens, cells_per_chunk=cells_per_chunk,
            option_token_ids=options, keep_logits=True))
        fast_times.append(seconds)
    fast_s = statistics.median(fast_times)
    log(f"{name} engine: {fast_s:.3f} s (median of {', '.join(f'{t:.3f}' for t in fast_times)}; "
        f"range {min(fast_times):.3f}-{max(fast_times):.3f} s)")
    result = {"mode": mode, "engine": engine_name, "fast_s": fast_s, "fast_range": [min(fast_times), max(fast_times)],
              "instances": len(recipients), "cells": len(grid) + 1, "plan": getattr(tested, "last_plan", None)}
    rivals = [("reference", lambda: reference.run_grid(model, tokenizer, donors, recipients, grid, module,
                                                        new_tokens, option_token_ids=options))] if reference_run else []
    if engine_name != "hf":
        rivals.insert(0, ("hf", lambda: fast_engine.run_grid(donors, recipients, grid, module, new_tokens,
                                                    option_token_ids=options, keep_logits=True)))
    if peer:
        run_peer(model, tokenizer, donors[:1], recipients[:1], grid[:1], module, min(new_tokens, 2),
                 options[:1] if options else None)  # warm-up
        rivals.insert(0, ("peer", lambda: run_peer(model, tokenizer, donors, recipients, grid, module, new_tokens,
                                                   options)))
    if peer and nnsight and engine_name == "hf":
        from . import nnsight_peer

        if nnsight_peer.available():
            wrapped = nnsight_peer.wrap(model, tokenizer)
            for label, reuse in (("nnsight", False), ("nnsight-prefix", True)):
                nnsight_peer.run_nnsight(wrapped, model, tokenizer, donors[:1], recipients[:1], grid[:1], module,
                                         min(new_tokens, 2), options[:1] if options else None, reuse)  # warm-up
                rivals.insert(len(rivals) - reference_run, (label, lambda reuse=reuse: nnsight_peer.run_nnsight(
                    wrapped, model, tokenizer, donors, recipients, grid, module, new_tokens, options, reuse)))
        else:
            log("nnsight: not installed, skipped (pip install 'xtp-ray[nnsight]')")
    lines = []
    tested_name = name
    for name, fn in rivals:
        other, seconds = _timed(fn)
        identical, total, diff = compare(fast, other, mode, strict=strict)
        log(f"{name + ':':<12} {seconds:.2f} s, max next-token logit difference {diff:.2e} "
            f"(tolerance {LOGIT_TOLERANCE:g})")
        result[name] = {"seconds": seconds, "speedup": seconds / fast_s, "identical": identical, "cells": total,
                        "max_logit_diff": diff}
        ratio = seconds / fast_s
        lines.append(f"{tested_name}/{name} speedup {ratio:.1f}x, cells {identical}/{total} identical" if ratio >= 1
                     else f"{tested_name}/{name} speedup {ratio:.3f}x, cells {identical}/{total} identical")
    per_cell = fast_s / (len(recipients) * (len(grid) + 1))
    log(f"{tested_name} engine: {1000 * per_cell:.2f} ms per cell, {1 / per_cell:.0f} cells/s, "
        f"{fast_s / len(recipients):.3f} s per instance")
    for line in lines:
        log(line)
    return result


_VLLM_TWINS: dict = {}


def _vllm_twin(model, tokenizer):
    """A vLLM engine over the very same weights (saved to a temporary directory); one per model
    shape for the process, since both modes build the same seeded model."""
    import tempfile

    from ..engine.vllm import VllmEngine

    key = model.config.to_json_string()
    if key not in _VLLM_TWINS:
        with tempfile.TemporaryDirectory(prefix="xtp-bench-") as path:
            model.save_pretrained(path)
            tokenizer.save_pretrained(path)
            _VLLM_TWINS[key] = VllmEngine(path, "float32")
    return _VLLM_TWINS[key]


def run_sweep(chunks: list[int], num_layers: int = 32, hidden: int = 256, prompt_tokens: int = 128,
              cells: int = 512, max_new_tokens: int = 20, threads: int | None = None, log=print) -> dict:
    """Generation time per cell against cells per forward (one instance, `cells` cells)."""
    if threads:
        torch.set_num_threads(threads)
    model, tokenizer = build_bench_model("LlamaForCausalLM", num_layers, hidden)
    donors, recipients = _bench_prompts(tokenizer, 1, prompt_tokens)
    grid = parse_cells("full", num_layers)[:cells - 1]  # + vanilla = `cells` rows
    log(f"sweep: LlamaForCausalLM, {num_layers} layers, hidden {hidden}, ~{prompt_tokens}-token prompt, "
        f"{len(grid) + 1} cells, {max_new_tokens} new tokens, threads {torch.get_num_threads()}")
    hf.run_grid(model, tokenizer, donors, recipients, grid[:8], "ffn", 2)  # warm-up
    out = {}
    for chunk in chunks:
        _, seconds = _timed(lambda chunk=chunk: hf.run_grid(model, tokenizer, donors, recipients, grid, "ffn",
                                                                max_new_tokens, cells_per_chunk=chunk))
        out[chunk] = 1000 * seconds / (len(grid) + 1)
        log(f"{chunk} cells per forward: {out[chunk]:.2f} ms per cell ({seconds:.2f} s)")
    return out


def run_overhead(num_layers: int = 32, rows: int = 1024, max_new_tokens: int = 20, share: bool = True,
                 repeats: int = 3, threads: int | None = 1, log=print, own_kernel: str = DEFAULT_OWN_KERNEL,
                 device: str = "cpu", speculate: bool | None = None) -> dict:
    """Host time per decode step where the arithmetic is negligible (hidden 8, one head, 1 instance x
    `rows` cells): (time of a grid with `max_new_tokens` - time with 1) / the extra decode steps, median of
    `repeats`, with the device<->host transfers per step that the engine made (`transfers.COUNTS`). The
    same at 2 rows, where only dispatch is left, beside a plain HF decode step at 2 and `rows` rows. On a
    GPU (`device`) the arithmetic is negligible at every row count: the step is the host's."""
    from ..engine import transfers

    if threads:
        torch.set_num_threads(threads)
    model, tokenizer = build_bench_model("LlamaForCausalLM", num_layers, 8, heads=1, kv_heads=1, intermediate=8,
                                         device=device)
    model.generation_config.eos_token_id = None  # no row stops early: every step runs every row
    tokenizer.eos_token = None
    donors, recipients = _bench_prompts(tokenizer, 1, 32)
    fast_engine = hf.HFEngine(model, tokenizer, share=share, own_kernel=own_kernel, speculate=speculate)
    steps = max_new_tokens - 1  # decode forwards after the first (patched) one

    def per_step(width: int) -> tuple[list[float], dict]:
        grid = (parse_cells("full", num_layers) * (1 + width // num_layers ** 2))[:width - 1]
        fast_engine.run_grid(donors, recipients, grid, "ffn", 2)  # warm-up
        seconds, counts = [], None
        for _ in range(repeats):
            _, short = _timed(lambda: fast_engine.run_grid(donors, recipients, grid, "ffn", 1))
            before, planning, ahead = transfers.COUNTS.snapshot(), PLANNING.snapshot(), hf.SPECULATION.snapshot()
            _, long = _timed(lambda: fast_engine.run_grid(donors, recipients, grid, "ffn", max_new_tokens))
            counts = {**transfers.COUNTS.since(before), **PLANNING.since(planning), **hf.SPECULATION.since(ahead)}
            seconds.append((long - short) / steps)
        return seconds, counts

    wide, counts = per_step(rows)
    narrow, _ = per_step(2)
    ms, dispatch_ms = 1000 * statistics.median(wide), 1000 * statistics.median(narrow)
    floor = {n: plain_decode_ms(model, n) for n in (2, rows)}
    result = {"ms_per_step": ms, "range_ms": [1000 * min(wide), 1000 * max(wide)],
              "ms_per_step_2_rows": dispatch_ms, "range_ms_2_rows": [1000 * min(narrow), 1000 * max(narrow)],
              "to_host_per_step": counts["to_host"] / max_new_tokens,
              "to_device_per_step": counts["to_device"] / steps, "layers": num_layers, "rows": rows,
              "share": share, "threads": torch.get_num_threads(), "device": device, "plain_hf_ms": floor,
              "planning_ms_per_step": 1000 * counts["seconds"] / max_new_tokens,
              "planned": counts["planned"], "reused": counts["reused"],
              "forwards_ahead": {"kept": counts["kept"], "redone": counts["redone"]}}
    log(f"host overhead: {ms:.2f} ms per decode step (median of {repeats}; range "
        f"{result['range_ms'][0]:.2f}-{result['range_ms'][1]:.2f}), {result['to_host_per_step']:.2f} device->host "
        f"syncs, {result['to_device_per_step']:.2f} host->device copies per step ({num_layers} layers, {rows} rows, "
        f"{'row sharing' if share else 'no row sharing'}, {result['threads']} thread(s)"
        + ("" if device == "cpu" else f", {device}") + ")")
    log(f"planning on the host: {result['planning_ms_per_step']:.2f} ms per step ({counts['planned']} forwards "
        f"planned, {counts['reused']} reusing the last plans, of {max_new_tokens})")
    if counts["kept"] or counts["redone"]:
        log(f"decode forwards run ahead of the tokens: {counts['kept']} kept, {counts['redone']} run again")
    log(f"at 2 rows (dispatch alone): {dispatch_ms:.2f} ms per decode step (range "
        f"{result['range_ms_2_rows'][0]:.2f}-{result['range_ms_2_rows'][1]:.2f})")
    log(f"plain HF decode step, same model (DynamicCache, no transplant): {floor[2]:.2f} ms at 2 rows, "
        f"{floor[rows]:.2f} ms at {rows} rows")
    return result


@torch.inference_mode()
def plain_decode_ms(model, rows: int, prompt: int = 32, steps: int = 20) -> float:
    """Median ms of one plain HF decode step (`DynamicCache`, greedy) at `rows` rows: the floor that
    transformers' own modules set for any engine that drives them."""
    from transformers import DynamicCache

    ids = torch.randint(3, model.config.vocab_size, (rows, prompt), device=model.device)
    cache = DynamicCache(config=model.config)
    token = model(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1].argmax(-1)
    times = []
    for _ in range(steps):
        token, seconds = _timed(lambda token=token: model(input_ids=token[:, None], past_key_values=cache,
                                                          use_cache=True).logits[:, -1].argmax(-1))
        times.append(seconds)
    return 1000 * statistics.median(times)

"""`xtp bench --suite gpu`: what a short GPU lease should measure, in one run, into one JSON file.

Phases, each skipped (and said so) when its estimate would pass the deadline; the JSON is
rewritten after every phase, so a run cut short keeps what it measured:
- kernels: the fused attention kernels (bf16 and fp32, with and without padding) against
  plain matmuls, and whether they ran or fell back;
- parity: fast engine against the reference in fp32 on tiny models, padded instances,
  generation and option scoring, every cell compared (tolerance 1e-4 on the logits);
- generate / score: the full grid on the big shape (default Llama-2-7B, bf16): seconds per
  instance, cells/s, rows per forward, peak memory against `chunk_bytes`, host time against
  GPU kernel time (torch profiler), fused-kernel fallbacks, host planning between forwards
  (forwards planned afresh or reusing the last plans, and the host seconds: the device waits for it),
  and the decode forwards run ahead of the tokens, kept and run again (on a GPU by default);
- own_attention: the rows' attention to their own tokens two ways (`cascade.own_part`: torch's fused
  kernel, the default, against `bmm`s), at the grid's rows and three cache lengths, then the
  generation grid with each, alternating: which one the engine should run on this device;
- speculation: the generation grid with each decode forward queued before the host has its tokens
  (`hf._decode`, the default on a GPU) and without, alternating, with the forwards kept and run again;
- subset: the batched peer and the reference on a few cells of one instance against the fast
  engine on the same cells (speed and decisions);
- overhead: `xtp bench --overhead` on the device: ms per decode step of a 32-layer model of negligible
  width at 1,024 and 2 rows, where the GPU's arithmetic is nothing and the step is the host's dispatch,
  with the transfers per step, beside plain HF's decode step.

`--small` runs every phase on the CPU on tiny shapes (CI checks its JSON). Only torch,
transformers, tokenizers, numpy and the package itself are imported: the GPU image has no
ray, pyarrow, vllm or matplotlib.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
import traceback
from pathlib import Path

import torch

from ..cells import parse_cells
from ..engine import reference
from ..engine.cascade import (
    KERNELS,
    attend_fused,
    attend_matmul,
    own_part,
    padding_bias,
    prefix_part,
)
from ..engine.hf import SPECULATION, HFEngine
from ..engine.sharing import PLANNING
from ..names import DEFAULT_OWN_KERNEL, OWN_KERNELS
from ..scoring import option_token_ids
from .bench import SHAPES, _bench_prompts, _timed, build_bench_model, compare, run_overhead, run_peer, synchronize

PROMPT_TOKENS = 130  # the paper's prompts are ~130 tokens on Llama-2's tokenizer
NEW_TOKENS = 20
PARITY_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Gemma2ForCausalLM")


def environment(device: str) -> dict:
    import transformers

    env = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
           "cpus": os.cpu_count(), "device": device}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}", gpu_memory_gib=props.total_memory / 2**30,
                   multiprocessors=props.multi_processor_count, cuda=torch.version.cuda)
    return env


def check_kernels(device: str, small: bool) -> dict:
    """Fused vs matmul attention on the prefix part's shapes: [B, K_h, m, D] queries against P keys."""
    batch, heads, rows, prefix, dim = (2, 2, 8, 13, 16) if small else (2, 32, 64, 130, 128)
    out = {}
    generator = torch.Generator(device=device).manual_seed(0)
    for dtype in (torch.bfloat16, torch.float32):
        for padded in (False, True):
            q, k, v = (torch.randn(batch, heads, n, dim, device=device, dtype=dtype, generator=generator)
                       for n in (rows, prefix, prefix))
            mask = None
            if padded:
                mask = torch.ones(batch, 1, 1, prefix, dtype=torch.bool, device=device)
                mask[0, ..., :3] = False  # instance 0 is left padded by 3
            KERNELS.reset()
            fused = attend_fused(q, k, v, dim ** -0.5, mask)
            plain = attend_matmul(q, k, v, dim ** -0.5, mask)
            entry = {"fused": fused is not None, "error": KERNELS.last_error}
            if fused is not None:
                entry["max_out_diff"] = (fused[0].float() - plain[0].float()).abs().max().item()
                entry["max_lse_diff"] = (fused[1] - plain[1]).abs().max().item()
            if mask is not None:
                bias = padding_bias(mask, dtype).expand(batch, heads, rows, prefix)
                entry["bias_strides"] = list(bias.stride())
            out[f"{str(dtype).removeprefix('torch.')}{'_padded' if padded else ''}"] = entry
    q = torch.randn(2 * 4, heads, 1, dim, device=device)
    empty = torch.zeros(2, heads, 0, dim, device=device)
    o, lse = prefix_part(q, empty, empty, None, dim ** -0.5, None, True, 2)
    out["empty_prefix"] = {"zeros": bool((o == 0).all()), "lse_minus_inf": bool(torch.isinf(lse).all())}
    return out


def check_parity(device: str, small: bool) -> dict:
    """fp32 fast engine vs reference, padded instances (three prompt lengths), every cell."""
    out = {}
    architectures = PARITY_ARCHITECTURES[:1] if small else PARITY_ARCHITECTURES
    for architecture in architectures:
        model, tokenizer = build_bench_model(architecture, 3 if small else 4, 64, 4, 2, device=device)
        donors, recipients = _bench_prompts(tokenizer, 3, 24)
        recipients = [recipients[0], tokenizer.decode(tokenizer(recipients[1]).input_ids[5:]), recipients[2][:12]]
        grid = parse_cells("full", 3 if small else 4)
        options = [option_token_ids(tokenizer, ["1", "2", "3"])] * 3
        engine = HFEngine(model, tokenizer)
        for mode, new_tokens in (("generate", 6), ("score", 0)):
            opts = options if mode == "score" else None
            fast = engine.run_grid(donors, recipients, grid, "ffn", new_tokens, cells_per_chunk=7,
                                   option_token_ids=opts, keep_logits=True)
            slow = reference.run_grid(model, tokenizer, donors, recipients, grid, "ffn", new_tokens, opts)
            identical, total, diff = compare(fast, slow, mode, strict=True)
            out[f"{architecture}/{mode}"] = {"identical": identical, "cells": total, "max_logit_diff": diff}
        del model
    return out


TOP_OPS = 15  # the GPU kernels (host ops on a CPU) with the most self time, named in the JSON


def _profile(fn, device: str) -> dict:
    """Wall time, summed GPU kernel time and summed host op time of one call (torch profiler), and the
    `TOP_OPS` kernels (ops, on a CPU) with the most self time: where the device's time goes."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    synchronize()
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        fn()
        synchronize()
        wall = time.perf_counter() - start
    kernel_us = host_us = 0.0
    kernels, host_ops = [], []  # (self us, name, calls)
    for event in prof.key_averages():
        kind = str(getattr(event, "device_type", "")).rsplit(".", 1)[-1]
        if kind == "CUDA":
            us = getattr(event, "self_device_time_total", 0) or getattr(event, "self_cuda_time_total", 0)
            kernel_us += us
            kernels.append((us, event.key, event.count))
        elif kind == "CPU":
            host_us += event.self_cpu_time_total
            host_ops.append((event.self_cpu_time_total, event.key, event.count))
    busiest, total = (kernels, kernel_us) if kernels else (host_ops, host_us)
    top = [{"name": name[:120], "calls": calls, "s": us / 1e6, "share": us / total if total else None}
           for us, name, calls in sorted(busiest, reverse=True)[:TOP_OPS]]
    return {"wall_s": wall, "gpu_kernel_s": kernel_us / 1e6, "host_ops_s": host_us / 1e6,
            "gpu_busy": kernel_us / 1e6 / wall if wall else None,
            "top": {"of": "gpu kernels" if kernels else "host ops", "by_self_time": top}}


def _peak(fn, device: str) -> tuple[object, float, int | None]:
    """(result, seconds, bytes allocated above the level before the call, at its peak; None on CPU)."""
    if not device.startswith("cuda"):
        result, seconds = _timed(fn)
        return result, seconds, None
    synchronize()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    result, seconds = _timed(fn)
    return result, seconds, torch.cuda.max_memory_allocated(device) - before


def measure_grid(model, tokenizer, mode: str, instances: int, device: str, repeats: int = 3) -> dict:
    """The full grid on `instances` instances: median seconds of `repeats`, plan, memory, profile."""
    donors, recipients = _bench_prompts(tokenizer, instances, PROMPT_TOKENS)
    layers = model.config.num_hidden_layers
    grid = parse_cells("full", layers)
    new_tokens = NEW_TOKENS if mode == "generate" else 0
    options = [option_token_ids(tokenizer, ["1", "2", "3"])] * instances if mode == "score" else None
    engine = HFEngine(model, tokenizer)

    def run():
        return engine.run_grid(donors, recipients, grid, "ffn", new_tokens, option_token_ids=options)

    engine.run_grid(donors, recipients, grid[:8], "ffn", min(new_tokens, 2), option_token_ids=options)  # warm-up
    times, peak = [], None
    KERNELS.reset()
    planning, ahead = PLANNING.snapshot(), SPECULATION.snapshot()
    for _ in range(repeats):
        _, seconds, used = _peak(run, device)
        times.append(seconds)
        peak = used if peak is None else max(peak, used or 0)
    planning = {name: value / repeats for name, value in PLANNING.since(planning).items()}
    ahead = {name: value / repeats for name, value in SPECULATION.since(ahead).items()}
    fused, fallbacks, error = KERNELS.fused, KERNELS.fallbacks, KERNELS.last_error
    median = statistics.median(times)
    cells = instances * (len(grid) + 1)
    plan = dict(engine.last_plan)
    prompt_len = len(tokenizer(recipients[0]).input_ids)
    return {"mode": mode, "instances": instances, "cells_per_instance": len(grid) + 1, "new_tokens": new_tokens,
            "prompt_tokens": prompt_len, "seconds": times, "median_s": median,
            "s_per_instance": median / instances, "cells_per_s": cells / median, "plan": plan,
            "peak_bytes_above_model": peak, "estimate_bytes": plan.get("estimate_bytes"),
            "fused_calls_per_run": fused // repeats, "fused_fallbacks_per_run": fallbacks // repeats,
            "fallback_error": error, "planning_per_run": {"planned": planning["planned"],
                                                          "reused": planning["reused"],
                                                          "host_s": planning["seconds"]},
            "forwards_ahead_per_run": ahead, "profile": _profile(run, device)}


def _seconds_per_call(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls, each waited for, after two warm-up calls."""
    for _ in range(2):
        fn()
    return statistics.median(_timed(fn)[1] for _ in range(repeats))


def _time_own_kernels(query, key, value, scaling: float) -> dict:
    """ms per `own_part` call with each kernel, and how far their outputs and log-sum-exps part."""
    KERNELS.reset()
    out = {kernel: own_part(query, key, value, scaling, None, kernel) for kernel in OWN_KERNELS}
    entry = {f"{kernel}_ms": 1000 * _seconds_per_call(lambda kernel=kernel: own_part(
        query, key, value, scaling, None, kernel), 10) for kernel in OWN_KERNELS}
    entry.update(fused_ran=KERNELS.fused > 0, fallback_error=KERNELS.last_error,
                 max_out_diff=(out["fused"][0].float() - out["matmul"][0].float()).abs().max().item(),
                 max_lse_diff=(out["fused"][1] - out["matmul"][1]).abs().max().item())
    return entry


def measure_own_attention(model, tokenizer, instances: int, device: str, rounds: int = 2) -> dict:
    """The rows' own part (`cascade.own_part`) with each kernel on random tensors at every row of the
    grid ([instances x (L^2 + 1)] rows, the model's heads, 1, 11 and 21 own keys: the first, middle and
    last decode step), then the whole generation grid with each, alternating `rounds` times."""
    config = model.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    layers = config.num_hidden_layers
    rows = instances * (layers ** 2 + 1)
    generator = torch.Generator(device=device).manual_seed(0)
    calls = {}
    for own in (1, 11, 21):
        query = torch.randn(rows, heads, 1, dim, device=device, dtype=model.dtype, generator=generator)
        key, value = (torch.randn(rows, kv_heads, own, dim, device=device, dtype=model.dtype, generator=generator)
                      for _ in range(2))
        calls[f"own_{own}"] = _time_own_kernels(query, key, value, dim ** -0.5)
    engine = HFEngine(model, tokenizer)  # one own-token store for both kernels (~21 GiB at the 7B shape)
    settings = {kernel: lambda kernel=kernel: setattr(engine, "own_kernel", kernel) for kernel in OWN_KERNELS}
    return {"rows": rows, "calls": calls, **alternate_grids(engine, settings, instances, rounds),
            "default": DEFAULT_OWN_KERNEL}


def alternate_grids(engine: HFEngine, settings: dict, instances: int, rounds: int = 2) -> dict:
    """The generation grid on `engine` under each setting (name -> a call that applies it), alternating
    `rounds` times after a warm-up round: seconds per run and per instance, the faster setting and the
    ratio, and how many cells' tokens the settings' last runs share with the first setting's."""
    model, tokenizer = engine.model, engine.tokenizer
    donors, recipients = _bench_prompts(tokenizer, instances, PROMPT_TOKENS)
    grid = parse_cells("full", model.config.num_hidden_layers)
    seconds: dict[str, list[float]] = {name: [] for name in settings}
    tokens: dict[str, list] = {}
    for round_ in range(rounds + 1):  # round 0 warms each setting up
        for name, apply in settings.items():
            apply()
            if round_ == 0:
                engine.run_grid(donors, recipients, grid[:8], "ffn", 2)
                continue
            out, took = _timed(lambda: engine.run_grid(donors, recipients, grid, "ffn", NEW_TOKENS))
            seconds[name].append(took)
            tokens[name] = [r.token_ids for row in out for r in row]
    per_instance = {name: statistics.median(times) / instances for name, times in seconds.items()}
    faster = min(per_instance, key=per_instance.get)
    slower = max(per_instance, key=per_instance.get)
    first = tokens[next(iter(settings))]
    return {"grid": {name: {"seconds": seconds[name], "s_per_instance": per_instance[name],
                            "same_tokens_as_first": sum(a == b for a, b in zip(first, tokens[name]))}
                     for name in settings},
            "cells": len(first), "faster": faster, "ratio": per_instance[slower] / per_instance[faster]}


def measure_speculation(model, tokenizer, instances: int, rounds: int = 2) -> dict:
    """The generation grid with decode forwards queued ahead of the tokens (`hf._decode`, the default on a
    GPU) and without, alternating: whether the device waited on the host between forwards, and how many
    of the forwards run ahead were kept (the others ran again)."""
    engine = HFEngine(model, tokenizer)
    settings = {"ahead": lambda: setattr(engine, "speculate", True),
                "in_turn": lambda: setattr(engine, "speculate", False)}
    before = SPECULATION.snapshot()
    out = alternate_grids(engine, settings, instances, rounds)
    counts = SPECULATION.since(before)
    return {**out, "forwards_kept": counts["kept"], "forwards_redone": counts["redone"]}


def measure_subset(model, tokenizer, device: str, cells: int, reference_cells: int) -> dict:
    """Fast vs peer on `cells` cells, fast vs reference on `reference_cells` cells, one instance, generation."""
    donors, recipients = _bench_prompts(tokenizer, 1, PROMPT_TOKENS)
    grid = parse_cells("full", model.config.num_hidden_layers)
    engine = HFEngine(model, tokenizer)
    out = {}
    for name, count, other in (
            ("peer", cells, lambda g: run_peer(model, tokenizer, donors, recipients, g, "ffn", NEW_TOKENS)),
            ("reference", reference_cells,
             lambda g: reference.run_grid(model, tokenizer, donors, recipients, g, "ffn", NEW_TOKENS))):
        subset = grid[::max(1, len(grid) // count)][:count]
        engine.run_grid(donors, recipients, subset[:2], "ffn", 2)  # warm-up
        other(subset[:1])
        fast, fast_s = _timed(lambda subset=subset: engine.run_grid(donors, recipients, subset, "ffn", NEW_TOKENS,
                                                                    keep_logits=True))
        slow, slow_s = _timed(lambda other=other, subset=subset: other(subset))
        identical, total, diff = compare(fast, slow, "generate", strict=model.dtype == torch.float32)
        out[name] = {"cells": total, "fast_s": fast_s, f"{name}_s": slow_s, "speedup": slow_s / fast_s,
                     "identical_decisions": identical, "max_logit_diff": diff}
    return out


def run_suite(small: bool = False, json_path: str = "bench-gpu.json", deadline_s: float = 450.0,
              shape: str = "llama2-7b", dtype: str = "bfloat16", instances: int = 2, log=print) -> dict:
    device = "cpu" if small else "cuda"
    if not small and not torch.cuda.is_available():
        raise ValueError("--suite gpu needs a CUDA device (torch sees none); --small runs it on the CPU")
    if shape not in SHAPES:
        raise ValueError(f"--shape {shape!r} unknown; known: {', '.join(SHAPES)}")
    started = time.perf_counter()
    result = {"suite": "gpu", "small": small, "environment": environment(device), "shape": shape, "dtype": dtype,
              "deadline_s": deadline_s, "phases": {}, "skipped": {}, "errors": {}}
    big = {"architecture": "LlamaForCausalLM", "layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2,
           "intermediate": 128, "vocab": 1000} if small else SHAPES[shape]
    result["model"] = big
    held: dict = {}

    def build():
        built = _timed(lambda: build_bench_model(big["architecture"], big["layers"], big["hidden"], big["heads"],
                                                 big["kv_heads"], big["intermediate"], big["vocab"],
                                                 "float32" if small else dtype, device))
        held["model"] = built[0]
        params = sum(p.numel() for p in built[0][0].parameters())
        return {"seconds": built[1], "parameters": params}

    # (name, estimated seconds on the GPU, what it runs)
    phases = [
        ("kernels", 15, lambda: check_kernels(device, small)),
        ("parity", 60, lambda: check_parity(device, small)),
        ("build", 60, build),
        ("generate", 120, lambda: measure_grid(*held["model"], "generate", instances, device)),
        ("score", 45, lambda: measure_grid(*held["model"], "score", instances, device)),
        ("own_attention", 45, lambda: measure_own_attention(*held["model"], instances, device)),
        ("speculation", 30, lambda: measure_speculation(*held["model"], instances)),
        ("subset", 90, lambda: measure_subset(*held["model"], device, 16 if small else 64, 4 if small else 8)),
        ("overhead", 30, lambda: run_overhead(2 if small else 32, rows=64 if small else 1024, threads=None,
                                              log=lambda *_: None, device=device)),
    ]
    for name, estimate, phase in phases:
        elapsed = time.perf_counter() - started
        if elapsed + (0 if small else estimate) > deadline_s:
            result["skipped"][name] = f"at {elapsed:.0f} s its ~{estimate} s would pass the {deadline_s:.0f} s deadline"
            log(f"suite: {name} skipped ({result['skipped'][name]})")
            continue
        if name in ("generate", "score", "own_attention", "speculation", "subset") and "model" not in held:
            result["skipped"][name] = "no model (the build phase did not run)"
            continue
        log(f"suite: {name} ...")
        try:
            result["phases"][name], seconds = _timed(phase)
            log(f"suite: {name} done in {seconds:.1f} s: {json.dumps(result['phases'][name], default=str)[:600]}")
        except Exception as exc:  # one phase failing must not lose the others' figures
            result["errors"][name] = f"{type(exc).__name__}: {exc}"
            log(f"suite: {name} failed: {traceback.format_exc()}")
        result["elapsed_s"] = time.perf_counter() - started
        Path(json_path).write_text(json.dumps(result, indent=1, default=str))
    result["elapsed_s"] = time.perf_counter() - started
    Path(json_path).write_text(json.dumps(result, indent=1, default=str))
    return result


def summary(result: dict) -> dict:
    """The one JSON line the suite prints: the headline figures."""
    phases = result["phases"]
    line = {"suite": "gpu", "small": result["small"], "device": result["environment"].get("gpu", "cpu"),
            "elapsed_s": round(result["elapsed_s"], 1), "skipped": sorted(result["skipped"]),
            "errors": sorted(result["errors"])}
    if "kernels" in phases:
        line["fused_everywhere"] = all(v.get("fused", True) for v in phases["kernels"].values())
    if "parity" in phases:
        line["parity"] = all(v["identical"] == v["cells"] for v in phases["parity"].values())
    for mode in ("generate", "score"):
        if mode in phases:
            line[f"{mode}_s_per_instance"] = round(phases[mode]["s_per_instance"], 4)
            line[f"{mode}_rows_per_forward"] = phases[mode]["plan"].get("rows_per_forward")
            line[f"{mode}_gpu_busy"] = phases[mode]["profile"]["gpu_busy"]
            line[f"{mode}_planning_s"] = round(phases[mode]["planning_per_run"]["host_s"], 4)
    if "own_attention" in phases:
        own = phases["own_attention"]
        line["own_attention_faster"] = own["faster"]
        line["own_attention_ratio"] = round(own["ratio"], 3)
    if "speculation" in phases:
        ahead = phases["speculation"]
        line["speculation_faster"] = ahead["faster"]
        line["speculation_ratio"] = round(ahead["ratio"], 3)
        line["speculation_kept"] = [ahead["forwards_kept"], ahead["forwards_kept"] + ahead["forwards_redone"]]
    if "overhead" in phases:
        line["overhead_ms_per_step"] = round(phases["overhead"]["ms_per_step"], 3)
        line["overhead_ms_2_rows"] = round(phases["overhead"]["ms_per_step_2_rows"], 3)
    for name in ("peer", "reference"):
        if name in phases.get("subset", {}):
            line[f"fast/{name}"] = round(phases["subset"][name]["speedup"], 1)
    return line

"""`xtp run --dry-run`: what a night would run and cost, planned without doing Ray work.

It plans as the run would (the same shards, in the same order), counts the model's parameters
(all of them, and the active ones per token of a mixture of experts), shards, instances, cells,
candidate rows and tokens, the prompts an actor would skip for their length (`lengths.py`),
checks the request against the cluster at RAY_ADDRESS where it answers (as under
`ray job submit`), checks the memory fit (`fit.assess_fit`, structured in the JSON), and
predicts with the cost model (`cost.py`) the actors' busy time, the GPU-seconds (every GPU an
actor holds, for all of that time) and the wall time (the plan's makespan on `max_actors`).
Nothing is written and nothing runs; a config-only model directory is enough. Only a refusal
(feasibility, memory fit) makes it exit 2 (`refusals`); rows left out are listed.
"""
from __future__ import annotations

import json
import os

from ..results import leftout
from .checks import ClusterCheck, assess_cluster
from .config import RunConfig


def reachable(address: str, timeout_s: float = 3.0) -> bool:
    """Whether a Ray GCS address (host:port, or ray://host:port) accepts a TCP connection now: Ray's
    own connect would wait minutes for an address that does not answer."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return False
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _cluster_checks(config: RunConfig, model_config: dict | None) -> tuple[str, dict | None]:
    """(feasibility, memory fit from the nodes) on a reachable cluster, without starting one."""
    import ray

    address = os.environ.get("RAY_ADDRESS", "")
    if ray.is_initialized():  # a caller's own session (tests, notebooks): use it, leave it running
        return _shown(assess_cluster(config, model_config))
    if not reachable(address):
        return (f"not checked: no cluster reachable (RAY_ADDRESS {address or 'unset'}; `ray job submit` sets "
                "it)"), None
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        return f"not checked: cluster at {address} did not answer ({exc})", None
    try:
        return _shown(assess_cluster(config, model_config))
    finally:
        ray.shutdown()


def _shown(checked: ClusterCheck) -> tuple[str, dict | None]:
    """The run's feasibility ("REFUSED: ..." where the run would be refused) and, for GPU actors without
    gpu_memory_gb, the memory fit on the nodes' GPUs: the checks the run makes (`checks.check_cluster`)."""
    return (f"REFUSED: {checked.feasibility}" if checked.refused else checked.feasibility), checked.fit


def _parameters(model_config: dict, trust_remote_code: bool) -> dict:
    """The model's parameters as the plan counts them: all (memory) and active per token (cost)."""
    from ..engine.footprint import count_parameters

    count = count_parameters(model_config, trust_remote_code)
    return {"total": count.total, "active": count.active, "routed_experts": count.routed,
            "experts": count.experts, "top_k": count.top_k, "input_embedding": count.embedding,
            "basis": "estimated from the config's shape" if count.estimated else
            "counted on HF's modules built on the meta device"}


def dry_run(config: RunConfig) -> dict:
    """The plan's figures and predictions (see the module docstring)."""
    from .checks import preflight
    from .cost import CALIBRATION, estimate_tokens
    from .lengths import token_counter, token_limit, too_long
    from .memory_fit import assess_fit, not_checked
    from .plan import model_shape, plan
    from .schedule import makespan

    preflight(config, tokenizer=False, fit=False)  # the fit is shown below, refused or not
    shape = model_shape(config)
    model_config = None if config.model.startswith("tiny:") else shape[0]
    planned = plan(config, shape)
    instances = [i for shard in planned.shards.values() for i in shard]
    shapes = planned.shapes
    rows = sum(shapes[i.task].cells for i in instances)
    prompt_tokens = sum(estimate_tokens(i.donor) + estimate_tokens(i.recipient) for i in instances)
    new_tokens = sum(shapes[i.task].cells * shapes[i.task].new_tokens for i in instances)
    fit = None if config.num_gpus_per_actor > 0 else not_checked("CPU actors")
    if config.gpu_memory_gb:
        fit = assess_fit(config, model_config, config.gpu_memory_gb, "gpu_memory_gb")
    feasible, cluster_fit = _cluster_checks(config, model_config)
    count, token_basis = token_counter(config)
    long_prompts = too_long(config, shape[0], planned.slices, count, token_basis)
    actor_s = sum(planned.costs.values())  # the actors' busy time: each shard's predicted seconds
    gpus = config.num_gpus_per_actor
    wall_s = makespan(list(planned.costs.values()), config.max_actors)
    basis = (f"cost model (xtp_ray/job/cost.py) calibrated on an {CALIBRATION['device']} ({CALIBRATION['source']}: "
             f"{CALIBRATION['engine']} engine, Llama-2-7B shape, bfloat16), scaled by FLOPs to this model's "
             "active parameters per token; an actor's seconds are one calibration GPU's (no speed-up from "
             "tensor parallelism assumed)"
             + ("; the vllm engine is not calibrated: the hf engine's figures are used" if config.engine == "vllm"
                else ""))
    bad = [r for r in planned.left_out if not r["note"]]  # notes (a task's own rule) are no bad data
    return {"config": config.to_json(), "shards": len(planned.shards),
            "sharding": "by size" if config.sharding == "size" or config.max_actors == 1 else
            f"by cost for {config.max_actors} actors, costliest first",
            "parameters": _parameters(shape[0], config.trust_remote_code),
            "instances": len(instances), "cells": rows, "rows": rows,
            "cells_per_instance": {task: s.cells for task, s in shapes.items()},
            "prompt_tokens_estimate": prompt_tokens, "new_tokens_at_most": new_tokens,
            "left_out": [str(e) for e in planned.errors],
            "left_out_count": leftout.total(bad) if bad else None,
            "left_out_by_reason": leftout.describe(bad) if bad else None,
            "too_long": [t.to_json() for t in long_prompts],
            "too_long_instances": sum(t.left_out for t in long_prompts),
            "token_limit": token_limit(config, shape[0]), "token_limit_of": "max_prompt_tokens" if
            config.max_prompt_tokens else "the model's context", "prompt_length_basis": token_basis,
            "feasibility": feasible,
            "memory_fit": cluster_fit or fit or not_checked("give gpu_memory_gb"),
            "predicted_actor_s": actor_s, "gpus_per_actor": gpus, "predicted_gpu_s": actor_s * gpus,
            "predicted_wall_s": wall_s, "actors": config.max_actors,
            "prediction_basis": basis, "prediction_device": CALIBRATION["device"]}


def refusals(result: dict) -> list[str]:
    """The checks that refuse the run: what makes a dry run exit 2 (left-out rows do not)."""
    refused = ["feasibility"] if str(result["feasibility"]).startswith("REFUSED") else []
    return refused + (["memory fit"] if result["memory_fit"]["verdict"] == "refused" else [])


def _parameters_line(p: dict) -> str:
    if not p["routed_experts"]:
        return f"{p['total']:,} (dense: all of them computed per token; {p['basis']})"
    if not p["experts"]:
        return (f"{p['total']:,} ({p['routed_experts']:,} in routed experts, but the config names no expert count "
                f"or top k: all counted as active per token; {p['basis']})")
    return (f"{p['total']:,} in memory (every expert); {p['active']:,} active per token (the top {p['top_k']} of "
            f"{p['experts']} routed experts per layer and all the rest: the cost model's count; "
            f"{p['active'] - p['input_embedding']:,} without the input embedding); {p['basis']}")


def print_dry_run(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
        return
    fit = result["memory_fit"]
    gpus = result["gpus_per_actor"]
    gpu_time = (f"{result['predicted_gpu_s']:,.0f} GPU-s ({gpus:g} GPU(s) per actor x "
                f"{result['predicted_actor_s']:,.1f} s of actor time, every GPU an actor holds; a prediction, on "
                f"an {result['prediction_device']})" if gpus else
                f"none: CPU actors ({result['predicted_actor_s']:,.0f} s of actor time as predicted for an "
                f"{result['prediction_device']})")
    left_out = result["left_out_count"]  # "790 rows", "790 rows and 1 whole file", None
    refused = refusals(result)
    lines = [
        ("parameters", _parameters_line(result["parameters"])),
        ("shards", f"{result['shards']:,} ({result['sharding']})"),
        ("instances", f"{result['instances']:,}"),
        ("cells per instance", ", ".join(f"{t} {n:,}" for t, n in result["cells_per_instance"].items())
         + " (vanilla included, all modules)"),
        ("candidate rows", f"{result['rows']:,} (one per cell)"),
        ("prompt tokens", f"~{result['prompt_tokens_estimate']:,} (estimated from characters)"),
        ("new tokens", f"at most {result['new_tokens_at_most']:,}"),
        ("left out", f"{left_out} ({result['left_out_by_reason']}; listed below; --json: left_out)" if left_out
         else "none"),
        ("over token limit", f"{result['too_long_instances']:,} instance(s) would be skipped"
         + (" (per task and language below; --json: too_long)" if result["too_long"] else "")
         + f": prompt + new tokens over {result['token_limit'] or 'no'} ({result['token_limit_of']}), prompts "
         + ("counted by the model's tokenizer" if result["prompt_length_basis"] == "the model's tokenizer" else
            result["prompt_length_basis"])),
        ("feasibility", result["feasibility"]),
        ("memory fit", ("REFUSED: " if fit["verdict"] == "refused" else "") + fit["line"].removeprefix("memory fit ")),
        ("predicted GPU time", gpu_time),
        ("predicted wall time", f"{result['predicted_wall_s']:,.0f} s on {result['actors']} actor(s) (the plan's "
                                "makespan; model loading and scale-up not included)"),
        ("prediction basis", result["prediction_basis"]),
        ("verdict", f"REFUSED by the {' and the '.join(refused)} (exit 2)" if refused else
         "the plan can run (exit 0)" + (f"; {left_out} left out, listed below" if left_out
                                        else "")),
    ]
    print("dry run: planned only; nothing ran and nothing was written")
    width = max(len(name) for name, _ in lines)
    for name, value in lines:
        print(f"  {name:<{width}}  {value}")
    for line in result["left_out"]:
        print(f"left out: {line}")
    for too_long in result["too_long"]:
        from .lengths import TooLong

        print(f"warning: {TooLong(**too_long).line()}")

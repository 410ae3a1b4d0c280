"""The distributed job: instances -> Ray Data -> GridSearch actors -> committed Parquet shards.

`planning` cuts the instances into shards, `actor.GridSearch` runs a shard per call
(one engine per actor), `shards` commits each shard whole; this module holds the
run's lease, keeps the manifest (config, model revision, every attempt) and drives
Ray Data. Ray retries work lost with a killed actor; rewriting a shard is
idempotent, so nothing is duplicated, and a rerun skips committed shards.
"""
from __future__ import annotations

import json
import logging
import os
import time
import uuid

from .. import __version__, storage
from ..candidates import committed_footers, report_damaged
from ..errors import root_cause
from .actor import GridSearch
from .config import RunConfig
from .planning import digest_plan, plan, preflight
from .quiet import without_noise
from ..results import leftout
from .shards import ShardWriteError, candidates_dir, redact, run_dir

log = logging.getLogger("xtp_ray")


def _write_manifest(config: RunConfig, manifest: dict) -> None:
    storage.write_text(storage.join(run_dir(config), "manifest.json"), json.dumps(manifest, indent=2))


def _read_manifest(config: RunConfig) -> dict | None:
    uri = storage.join(run_dir(config), "manifest.json")
    return json.loads(storage.read_text(uri)) if storage.exists(uri) else None


def check_writable(config: RunConfig) -> None:
    probe = storage.join(run_dir(config), f"_probe-{uuid.uuid4().hex}")
    try:
        storage.write_text(probe, "ok")
        fs, path = storage.resolve(probe)
        fs.delete_file(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"output {config.output!r} is not writable: {redact(str(exc))}") from None


def _resumable_shards(config: RunConfig) -> dict[str, dict[str, str]]:
    """Committed shards a resume may keep, with their footers: all made with this run's config digest
    (checked whether or not the manifest is there: its loss must not let a run mix configurations).
    Damaged shards are reported and run again."""
    footers, damaged = committed_footers(candidates_dir(config))
    committed = {name: meta.get("xtp_config_digest") for name, meta in footers.items()}
    foreign = sorted(name for name, digest in committed.items() if digest != config.digest())
    if foreign:
        raise ValueError(f"run {config.run_id!r} in {config.output} holds {len(foreign)} shard(s) made with another "
                         f"model/cells/scoring configuration (e.g. {foreign[0]}: digest "
                         f"{committed[foreign[0]]}, this run's is {config.digest()}); use a new run_id")
    report_damaged(damaged)
    return footers


def _remove_temporaries(config: RunConfig) -> None:
    """Drop `<run>/_tmp` once every actor is done: what is left there is from attempts that died."""
    fs, path = storage.resolve(storage.join(run_dir(config), "_tmp"))
    try:
        fs.delete_dir(path)
    except OSError:  # absent, or the store refused: nothing is lost either way
        pass


def _request_text(config: RunConfig) -> str:
    return f"{config.num_cpus_per_actor:g} CPU, {config.num_gpus_per_actor:g} GPU"


def _check_cluster(config: RunConfig) -> None:
    """On the live cluster, before any actor: the request fits somewhere, and local paths the actors
    write or read (the output, a model directory) are the same place on every node that may run one."""
    from .config import TINY_PREFIX
    from .placement import check_feasible, check_shared

    how = check_feasible(config.num_cpus_per_actor, config.num_gpus_per_actor)
    log.info("actor request %s: %s", _request_text(config), how)
    if config.num_gpus_per_actor > 0 and config.gpu_memory_gb is None:  # given: preflight checked it
        from .fit import fit_on_cluster
        from .planning import read_model_config

        log.info("%s", fit_on_cluster(config, read_model_config(config)))
    outputs = {"output": run_dir(config)} if "://" not in config.output else {}
    inputs = {}
    if not config.model.startswith((TINY_PREFIX, "s3://")) and os.path.isdir(config.model):
        inputs["model"] = os.path.join(os.path.abspath(config.model), "config.json")  # preflight: it is there
    if outputs or inputs:
        check_shared(outputs, inputs, config.num_cpus_per_actor, config.num_gpus_per_actor)


def run_job(config: RunConfig, ray_address: str | None = None, take_over: bool = False) -> dict:
    """Grid search over every shard not yet committed, holding the run's lease; returns a summary."""
    from . import lease

    if "://" not in config.output:  # every process must resolve it alike
        if not os.path.isabs(config.output) and "runtime_resources" in os.getcwd():
            raise ValueError(f"output {config.output!r} is relative, and under `ray job submit` the working directory "
                             f"is Ray's temporary copy ({os.getcwd()}), removed with the job's runtime env: give "
                             "--output s3://bucket/prefix or an absolute path on a filesystem every node shares")
        config = config.replace(output=os.path.abspath(config.output))
    preflight(config)
    check_writable(config)
    with lease.held(run_dir(config), config.lease_ttl_s, take_over) as held:
        summary = _run_planned(config, ray_address)
        if held.lost:
            raise ShardWriteError(f"lost the lease of run {config.run_id!r} to another driver while running; "
                                  "its shards are committed, rerun to check the run is complete")
    return summary


def busy_share(timings: list[dict]) -> float | None:
    """The share of actor time spent running shards: each actor counted from the start of its first
    shard (its model loaded) to the end of the run's last shard, so idle ends show, and a late start
    (an autoscaler adding a node) does not."""
    if not timings:
        return None
    end = max(t["end"] for t in timings)
    first = {}
    for t in timings:
        first[t["actor"]] = min(first.get(t["actor"], t["start"]), t["start"])
    up = sum(end - start for start in first.values())
    return sum(t["end"] - t["start"] for t in timings) / up if up > 0 else 1.0


def resumed_plan(config: RunConfig, manifest: dict, planned) -> dict[str, list]:
    """The shards to run: the run's own plan where its manifest holds one (a rerun keeps its shards
    whatever the pool or the sharding now, so nothing is lost or duplicated), else the fresh plan.
    A run planned before plans were kept resumes under the plan by size that made it, where its
    digest says so; anything else is refused in one line."""
    from .schedule import cut_by_size

    stale = (f"run {config.run_id!r} in {config.output} was planned over other instances (tasks, langs, splits, "
             "limit or the data changed); use a new run_id")
    stored = manifest.get("plan")
    if stored is not None:
        by_id = {i.id: i for instances in planned.shards.values() for i in instances}
        ids = [i for names in stored.values() for i in names]
        if len(ids) != len(set(ids)) or set(ids) != set(by_id):
            raise ValueError(stale)
        return {name: [by_id[i] for i in names] for name, names in stored.items()}
    if manifest.get("plan_digest") is None:  # a new run
        return planned.shards
    # a shard name must always mean the same instances, or resuming would lose or duplicate rows
    for shards in (planned.shards, cut_by_size(planned.groups, config.shard_size)[0]):
        if digest_plan(shards) == manifest["plan_digest"]:
            return shards
    raise ValueError(stale.replace("limit or", "limit, shard_size or"))


def _run_planned(config: RunConfig, ray_address: str | None) -> dict:
    import ray
    from ray.data import ActorPoolStrategy

    planned = plan(config)
    bad = [r for r in planned.left_out if not r["note"]]
    if bad:  # one line: errors.jsonl and the command's own lines list them
        log.warning("left out while loading: %s (%s)", leftout.total(bad), leftout.describe(bad))
    notes = [r for r in planned.left_out if r["note"]]
    if notes:
        log.info("notes while loading: %s (%s)", leftout.total(notes), leftout.describe(notes))
    manifest = _read_manifest(config) or {"run_id": config.run_id, "attempts": []}
    if manifest.get("config_digest") not in (None, config.digest()):
        raise ValueError(f"run {config.run_id!r} in {config.output} was made with another model/cells/scoring "
                         "configuration; use a new run_id")
    shards = resumed_plan(config, manifest, planned)
    plan_digest = digest_plan(shards)
    for earlier in manifest["attempts"]:
        if earlier.get("status") == "running":  # its driver died without a word (we hold the lease)
            earlier["status"] = "interrupted"
    done = _resumable_shards(config)
    todo = [name for name in shards if name not in done]  # the plan's order: costliest first
    # what was left out so far (loading, and the shards an earlier attempt committed), before any work
    leftout.write(run_dir(config), planned.left_out + leftout.skipped_in(done, shards))
    attempt = {"started": time.time(), "status": "running", "shards_total": len(shards),
               "shards_skipped_as_done": len(set(shards) & set(done)), "shards_todo": len(todo)}
    manifest.update({"config": config.to_json(), "config_digest": config.digest(), "xtp_ray_version": __version__,
                     "status": "running", "shards": sorted(shards), "plan_digest": plan_digest,
                     "plan": {name: [i.id for i in instances] for name, instances in shards.items()}})
    manifest["attempts"].append(attempt)
    _write_manifest(config, manifest)

    summaries = []
    start = time.perf_counter()
    try:
        if todo:
            if not ray.is_initialized():
                ray.init(address=ray_address, include_dashboard=False, log_to_driver=True)
            _check_cluster(config)
            # a Dataset takes a copy of the current DataContext when it is made: set it first
            context = ray.data.DataContext.get_current()
            context.wait_for_min_actors_s = config.pool_start_timeout_s
            # Ray Data grows a pool while its actors' tasks in flight reach this share of their slots. Its
            # default (1.75) is out of reach with two in flight per actor, and with one it would never
            # grow past min_actors; at 1.0 the pool doubles while every actor has a shard queued.
            context.autoscaling_config.actor_pool_util_upscaling_threshold = 1.0
            items = [{"shard": s, "instances": json.dumps([i.to_row() for i in shards[s]])} for s in todo]
            dataset = ray.data.from_items(items, override_num_blocks=len(items))
            results = dataset.map_batches(
                GridSearch, fn_constructor_kwargs={"config": config.to_json()}, batch_size=1,
                # one shard running and one queued per actor: the queue is what lets the pool grow (above);
                # the plan's last wave is cut fine, so a shard queued behind another at the end is short
                compute=ActorPoolStrategy(min_size=config.min_actors, max_size=config.max_actors,
                                          max_tasks_in_flight_per_actor=2),
                # Ray Data's actor pools restart lost actors and retry their tasks by default.
                num_gpus=config.num_gpus_per_actor, num_cpus=config.num_cpus_per_actor)
            with without_noise():
                try:
                    summaries = results.take_all()
                except ray.exceptions.GetTimeoutError:
                    raise ValueError(f"no actor of the pool started within pool_start_timeout_s = "
                                     f"{config.pool_start_timeout_s:g} s: pending actors ask for "
                                     f"{_request_text(config)}; `ray status` shows what the cluster offers and "
                                     "what the autoscaler is doing") from None
        footers, damaged = committed_footers(candidates_dir(config))
        report_damaged(damaged)
        missing = sorted(set(shards) - set(footers))
        # every row left out, once: loading's, and each committed shard's (this attempt's and earlier ones')
        skipped = leftout.skipped_in(footers, shards)
        left_out = planned.left_out + skipped
        leftout.write(run_dir(config), left_out)
        _remove_temporaries(config)
        if missing:
            raise ShardWriteError(f"{len(missing)} shard(s) not committed: {', '.join(missing[:10])}")
    except BaseException as exc:
        # the root cause first (an actor's exception arrives wrapped in Ray's), then the whole text
        attempt.update({"status": "failed", "finished": time.time(), "error": redact(root_cause(exc))[:1000],
                        "error_detail": redact(str(exc))[-4000:]})
        manifest["status"] = "failed"
        try:
            _write_manifest(config, manifest)
        except OSError:
            log.error("could not record the failure in the manifest")
        raise
    seconds = time.perf_counter() - start
    instances = sum(s["instances"] for s in summaries)
    cells = sum(s["cells"] for s in summaries)
    timings = [{"shard": s["shard"], "start": s["started"], "end": s["finished"], "actor": s["actor"],
                "node": s["node"], "predicted_s": planned.costs.get(s["shard"])} for s in summaries]
    attempt.update({"status": "complete", "finished": time.time(), "seconds": seconds, "instances": instances,
                    "cells": cells, "instances_per_s": instances / seconds if instances else 0.0,
                    "cells_per_s": cells / seconds if cells else 0.0,
                    # rows this attempt's shards left out (too long; their groups): listed in errors.jsonl
                    "skipped": sum(len(json.loads(s["skipped"])) for s in summaries), "shards": timings,
                    "busy_share": busy_share(timings)})
    manifest["status"] = "complete"
    manifest["model_revision"] = summaries[0].get("revision") if summaries else manifest.get("model_revision")
    _write_manifest(config, manifest)
    if instances:
        log.info("grid search: %d instances, %d cells in %.1f s: %.2f instances/s, %.1f cells/s",
                 instances, cells, seconds, instances / seconds, cells / seconds)
    return {"run_dir": run_dir(config), "shards": len(shards), "shards_run": len(todo), "instances": instances,
            "busy_share": attempt["busy_share"], "cells": cells, "seconds": seconds, "skipped": skipped,
            "left_out": left_out, "languages": leftout.lost_languages(left_out, _scored_languages(planned, skipped))}


def _scored_languages(planned, skipped: list[dict]) -> dict[tuple[str, str], set]:
    """(task, split) -> its languages with at least one instance that ran (not every one left out)."""
    lost = {}
    for entry in skipped:
        key = (entry["task"], entry["split"], entry["lang"])
        lost[key] = lost.get(key, 0) + 1
    shown: dict[tuple[str, str], set] = {}
    for (task, split, lang), instances in planned.groups.items():
        if len(instances) > lost.get((task, split, lang), 0):
            shown.setdefault((task, split), set()).add(lang)
    return shown

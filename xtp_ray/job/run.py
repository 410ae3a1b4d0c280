"""A run from start to end: the checks (`checks`), the run's lease (`lease`), its plan (`plan`, the run's
own on a resume), the manifest (`manifest`), the shards not yet committed on Ray Data (`pipeline`), then
what was committed and left out. A rerun skips committed shards."""
from __future__ import annotations

import logging
import time

from ..candidates import committed_footers, report_damaged
from ..results import leftout
from . import lease
from .checks import absolute_output, check_writable, preflight
from .config import RunConfig
from .manifest import begin_attempt, open_manifest, record_completion, record_failure
from .pipeline import run_shards
from .plan import Plan, plan, resumed_plan, scored_languages
from .shards import ShardWriteError, candidates_dir, remove_temporaries, resumable_shards, run_dir

log = logging.getLogger("xtp_ray")


def run_job(config: RunConfig, ray_address: str | None = None, take_over: bool = False) -> dict:
    """Grid search over every shard not yet committed, holding the run's lease; returns a summary."""
    config = absolute_output(config)
    preflight(config)
    check_writable(config)
    with lease.held(run_dir(config), config.lease_ttl_s, take_over) as held:
        summary = _run_planned(config, ray_address)
        if held.lost:
            raise ShardWriteError(f"lost the lease of run {config.run_id!r} to another driver while running; "
                                  "its shards are committed, rerun to check the run is complete")
    return summary


def _run_planned(config: RunConfig, ray_address: str | None) -> dict:
    planned = plan(config)
    _log_loading(planned.left_out)
    manifest = open_manifest(config)
    shards = resumed_plan(config, manifest, planned)
    done = resumable_shards(config)
    todo = [name for name in shards if name not in done]  # the plan's order: costliest first
    # what was left out so far (loading, and the shards an earlier attempt committed), before any work
    leftout.write(run_dir(config), planned.left_out + leftout.skipped_in(done, shards))
    attempt = begin_attempt(config, manifest, shards, done, todo)
    start = time.perf_counter()
    try:
        summaries = run_shards(config, shards, todo, ray_address) if todo else []
        skipped, left_out = _collect(config, shards, planned)
    except BaseException as exc:
        record_failure(config, manifest, attempt, exc)
        raise
    attempt = record_completion(config, manifest, attempt, summaries, time.perf_counter() - start, planned.costs)
    instances, cells, seconds = attempt["instances"], attempt["cells"], attempt["seconds"]
    if instances:
        log.info("grid search: %d instances, %d cells in %.1f s: %.2f instances/s, %.1f cells/s",
                 instances, cells, seconds, instances / seconds, cells / seconds)
    return {"run_dir": run_dir(config), "shards": len(shards), "shards_run": len(todo), "instances": instances,
            "busy_share": attempt["busy_share"], "cells": cells, "seconds": seconds, "skipped": skipped,
            "left_out": left_out, "languages": leftout.lost_languages(left_out, scored_languages(planned, skipped))}


def _log_loading(left_out: list[dict]) -> None:
    """One line each for the rows left out while loading and the notes (errors.jsonl and the command's own
    lines list them)."""
    bad = [r for r in left_out if not r["note"]]
    if bad:
        log.warning("left out while loading: %s (%s)", leftout.total(bad), leftout.describe(bad))
    notes = [r for r in left_out if r["note"]]
    if notes:
        log.info("notes while loading: %s (%s)", leftout.total(notes), leftout.describe(notes))


def _collect(config: RunConfig, shards: dict, planned: Plan) -> tuple[list[dict], list[dict]]:
    """After the pool: every row left out, once (loading's, and each committed shard's, this attempt's and
    earlier ones'), written to errors.jsonl; the temporaries dropped; ShardWriteError where a shard of the
    plan is not committed. (skipped in the shards, every row left out)."""
    footers, damaged = committed_footers(candidates_dir(config))
    report_damaged(damaged)
    missing = sorted(set(shards) - set(footers))
    skipped = leftout.skipped_in(footers, shards)
    left_out = planned.left_out + skipped
    leftout.write(run_dir(config), left_out)
    remove_temporaries(config)
    if missing:
        raise ShardWriteError(f"{len(missing)} shard(s) not committed: {', '.join(missing[:10])}")
    return skipped, left_out

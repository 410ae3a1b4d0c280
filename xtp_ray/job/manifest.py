"""The run's manifest, `<output>/<run_id>/manifest.json`: its config and digest, the model revision, the plan
(shard -> instance ids) and its digest, and every attempt (status, shards run and skipped, the figures and
per-shard timings of a complete one, the error of a failed one)."""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection

from .. import __version__, storage
from ..errors import root_cause
from ..tasks import Instance
from .config import RunConfig
from .plan import digest_plan
from .shards import redact, run_dir

log = logging.getLogger("xtp_ray")


def write_manifest(config: RunConfig, manifest: dict) -> None:
    storage.write_text(storage.join(run_dir(config), "manifest.json"), json.dumps(manifest, indent=2))


def read_manifest(config: RunConfig) -> dict | None:
    uri = storage.join(run_dir(config), "manifest.json")
    return json.loads(storage.read_text(uri)) if storage.exists(uri) else None


def open_manifest(config: RunConfig) -> dict:
    """The run's manifest, or a new one. A run made with another model/cells/scoring configuration is
    refused in one line; attempts still `running` are marked `interrupted` (their driver died without a
    word: this one holds the lease)."""
    manifest = read_manifest(config) or {"run_id": config.run_id, "attempts": []}
    if manifest.get("config_digest") not in (None, config.digest()):
        raise ValueError(f"run {config.run_id!r} in {config.output} was made with another model/cells/scoring "
                         "configuration; use a new run_id")
    for earlier in manifest["attempts"]:
        if earlier.get("status") == "running":
            earlier["status"] = "interrupted"
    return manifest


def begin_attempt(config: RunConfig, manifest: dict, shards: dict[str, list[Instance]], done: Collection[str],
                  todo: list[str]) -> dict:
    """Record the run's config and plan and a new running attempt (written before any work); the attempt."""
    attempt = {"started": time.time(), "status": "running", "shards_total": len(shards),
               "shards_skipped_as_done": len(set(shards) & set(done)), "shards_todo": len(todo)}
    manifest.update({"config": config.to_json(), "config_digest": config.digest(), "xtp_ray_version": __version__,
                     "status": "running", "shards": sorted(shards), "plan_digest": digest_plan(shards),
                     "plan": {name: [i.id for i in instances] for name, instances in shards.items()}})
    manifest["attempts"].append(attempt)
    write_manifest(config, manifest)
    return attempt


def record_failure(config: RunConfig, manifest: dict, attempt: dict, exc: BaseException) -> None:
    """The attempt failed: the root cause first (an actor's exception arrives wrapped in Ray's), then the
    whole text. A manifest that cannot be written is logged, not raised over the failure itself."""
    attempt.update({"status": "failed", "finished": time.time(), "error": redact(root_cause(exc))[:1000],
                    "error_detail": redact(str(exc))[-4000:]})
    manifest["status"] = "failed"
    try:
        write_manifest(config, manifest)
    except OSError:
        log.error("could not record the failure in the manifest")


def record_completion(config: RunConfig, manifest: dict, attempt: dict, summaries: list[dict], seconds: float,
                      costs: dict[str, float]) -> dict:
    """The attempt is complete: its figures from the shards' summaries (`actor.GridSearch`), with their
    timings and predicted seconds (`costs`), and the model revision; the attempt."""
    instances = sum(s["instances"] for s in summaries)
    cells = sum(s["cells"] for s in summaries)
    timings = [{"shard": s["shard"], "start": s["started"], "end": s["finished"], "actor": s["actor"],
                "node": s["node"], "predicted_s": costs.get(s["shard"])} for s in summaries]
    attempt.update({"status": "complete", "finished": time.time(), "seconds": seconds, "instances": instances,
                    "cells": cells, "instances_per_s": instances / seconds if instances else 0.0,
                    "cells_per_s": cells / seconds if cells else 0.0,
                    # rows this attempt's shards left out (too long; their groups): listed in errors.jsonl
                    "skipped": sum(len(json.loads(s["skipped"])) for s in summaries), "shards": timings,
                    "busy_share": busy_share(timings)})
    manifest["status"] = "complete"
    manifest["model_revision"] = summaries[0].get("revision") if summaries else manifest.get("model_revision")
    write_manifest(config, manifest)
    return attempt


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

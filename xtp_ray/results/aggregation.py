"""A run's report from its committed shards: partial aggregates merged, never every row in memory.

Each committed shard carries its partials in its Parquet footer (`partials.py`); aggregation
reads the footers only (one ranged read each), merges them and summarises: memory grows
with shards and layers, not rows. A shard without partials (written by an older version)
is summarised from its own rows; `--from-candidates` does that for every shard, streaming
shard by shard, so the rows stay the source of truth. An instance seen in two shards is
refused. While the job still runs, the shards committed so far are aggregated and the
report says how many of the planned ones are missing.
"""
from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pyarrow.parquet as pq

from .. import storage
from ..candidates import intact_footers
from ..names import check_name
from . import leftout
from .lmeval import results_json
from .partials import KEY, Merged, applied_first_column, columns_of, from_footer, shard_partials, summarise
from .scaling import offline_scaling
from .tables import build_tables, target_first

log = logging.getLogger("xtp_ray")


# Shards summarised from their rows ahead of the merge, on threads: reads from object storage (latency)
# and Parquet decoding overlap each other and the merge; at most this many shards' rows in memory.
READ_AHEAD = 4


def in_order(names: list[str], work, ahead: int = READ_AHEAD) -> Iterator[tuple[str, object]]:
    """(name, work(name)) for each name, in the names' order, with up to `ahead` of them running at once
    on threads. An exception from `work` comes out where its name's turn is."""
    with ThreadPoolExecutor(max_workers=ahead) as pool:
        pending: deque = deque()
        for name in names:
            pending.append((name, pool.submit(work, name)))
            if len(pending) >= ahead:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()


def collect_partials(run_uri: str, from_candidates: bool = False, manifest: dict | None = None) -> tuple[Merged, dict]:
    """Merged partials of a run's committed shards, and what was read: shards, from rows, planned, missing.
    manifest: the run's, where the caller has read it already."""
    directory = storage.join(run_uri, "candidates")
    footers = intact_footers(directory)
    fs, path = storage.resolve(directory)
    names = sorted(footers)
    stored = {name: None if from_candidates else from_footer(footers[name].get(KEY)) for name in names}
    unsummarised = [name for name in names if stored[name] is None and int(footers[name]["num_rows"])]

    def summarise_rows(name: str) -> dict:
        file = f"{path}/{name}.parquet"
        columns = columns_of(pq.read_schema(file, filesystem=fs))
        return shard_partials(pq.read_table(file, columns=columns, filesystem=fs), name)

    waiting = set(unsummarised)
    results = in_order(unsummarised, summarise_rows)  # yields in the order of `names` too
    merged = Merged()
    for name in names:  # in name order, so a refused duplicate is always reported against the same shard
        partials = stored[name]
        if name in waiting:
            partials = next(results)[1]
        if partials is not None:
            merged.add(partials, name)
    from_rows = len(unsummarised)
    planned = (read_manifest(run_uri) if manifest is None else manifest).get("shards")
    missing = sorted(set(planned) - set(footers)) if planned is not None else []
    info = {"committed": len(footers), "from_rows": from_rows,
            "planned": len(planned) if planned is not None else None, "missing": len(missing)}
    if missing:
        log.warning("aggregating %d of %d planned shards: %d not committed yet (e.g. %s)", len(footers),
                    len(planned), len(missing), missing[0])
    return merged, info


def read_manifest(run_uri: str) -> dict:
    """The run's manifest.json, or {} where there is none (a run written elsewhere, by hand)."""
    uri = storage.join(run_uri, "manifest.json")
    return json.loads(storage.read_text(uri)) if storage.exists(uri) else {}


RUN_KEYS = ("model", "engine", "dtype", "scoring", "max_new_tokens", "data_root", "modules", "cells")


def run_of(manifest: dict) -> dict:
    """What the run was, for the report's header: the config's model, engine, dtype, scoring, data root,
    modules and cells, and the model revision the actors loaded (recorded when the run ends). Keys the
    manifest lacks (a run without one) are left out; the header says "not recorded"."""
    config = manifest.get("config") or {}
    run = {key: config[key] for key in RUN_KEYS if key in config}
    if "model_revision" in manifest or config.get("model_revision"):
        run["model_revision"] = manifest.get("model_revision") or config.get("model_revision")
    return run


def started_of(manifest: dict) -> float | None:
    """When the run's first attempt started, or None."""
    return min((a["started"] for a in manifest.get("attempts") or [] if "started" in a), default=None)


def aggregate_merged(merged: Merged) -> dict:
    """Tables and the target-first selection from merged partials (the numbers `rows.aggregate_frame` gives)."""
    groups = {}
    for key in sorted(merged.groups, key=lambda k: tuple(k.split("/"))):
        task, split, module, lang = key.split("/")
        groups.setdefault(f"{task}/{split}/{module}", {})[lang] = summarise(merged.groups[key])

    def applied_of(task, module, lang, choice):
        unseen = merged.groups.get(f"{task}/unseen/{module}/{lang}")
        return applied_first_column(unseen, choice) if unseen else None

    tables = build_tables(groups)
    return {"tables": tables, "target_first": target_first(groups, applied_of),
            "offline_scaling": offline_scaling(tables)}


def compare(report: dict, earlier: dict) -> list[dict]:
    """Per (table, language): vanilla and upper-bound deltas against an earlier report."""
    deltas = []
    for key, table in report["tables"].items():
        before = earlier.get("tables", {}).get(key)
        if not before:
            continue
        for lang, now in table["by_lang"].items():
            old = before["by_lang"].get(lang)
            if not old:
                continue
            entry = {"table": key, "lang": lang, "vanilla_delta": now["vanilla_accuracy"] - old["vanilla_accuracy"]}
            if "upper_bound" in now and "upper_bound" in old:
                entry["upper_bound_delta"] = now["upper_bound"] - old["upper_bound"]
            deltas.append(entry)
    return deltas


def run_started(run_uri: str) -> float | None:
    """When the run's first attempt started (from its manifest), or None."""
    return started_of(read_manifest(run_uri))


def run_uri_of(output: str, run_id: str) -> str:
    """<output>/<run_id>, the run id checked to be a name (it comes from a flag)."""
    return storage.join_under(output, check_name("run id", run_id))


def earlier_report_uri(output: str, compare_with: str) -> str:
    """The report.json of the run to compare with; ValueError, before any work, if it has none."""
    uri = storage.join(run_uri_of(output, compare_with), "report", "report.json")
    if not storage.exists(uri):
        raise ValueError(f"--compare-with {compare_with!r}: no report under {output} ({uri} not found)")
    return uri


def aggregate_run(output: str, run_id: str, compare_with: str | None = None, from_candidates: bool = False) -> dict:
    """Write report.json, report.md, report.html and the figures under <output>/<run_id>/report/."""
    from .report import render_figures, render_html, render_markdown

    run_uri = run_uri_of(output, run_id)
    earlier_uri = earlier_report_uri(output, compare_with) if compare_with else None
    manifest = read_manifest(run_uri)  # read once: planned shards, start, config
    merged, shards = collect_partials(run_uri, from_candidates, manifest)
    report = {"run_id": run_id, "started": started_of(manifest), "run": run_of(manifest), "shards": shards,
              **aggregate_merged(merged)}
    report["left_out"] = leftout.section(leftout.read(run_uri), report["tables"])  # errors.jsonl, per task and lang
    if compare_with:
        earlier = json.loads(storage.read_text(earlier_uri))
        report["compared_with"] = compare_with
        report["deltas"] = compare(report, earlier)
    figures = render_figures(report)
    report["figures"] = sorted(figures)
    report_uri = storage.join(run_uri, "report")
    for name, data in figures.items():
        storage.write_bytes(storage.join_under(report_uri, name), data)
    storage.write_text(storage.join(report_uri, "report.json"), json.dumps(report, indent=1))
    storage.write_text(storage.join(report_uri, "results.json"),
                       json.dumps(results_json(report, manifest.get("config")), indent=1))
    storage.write_text(storage.join(report_uri, "report.md"), render_markdown(report))
    storage.write_text(storage.join(report_uri, "report.html"), render_html(report, figures))
    log.info("report: %s", storage.join(report_uri, "report.html"))
    return report

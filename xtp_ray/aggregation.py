"""From committed candidate shards to tables, the upper bound, best cells and heatmaps.

Reads only `<run>/candidates/*.parquet` (committed shards; temporary files live
elsewhere). Accuracies follow SPEC 2: the instance-aware upper bound counts an
instance as correct if any searched cell answers it (vanilla excluded); overall
figures are micro-averaged over instances; std across languages is the
population std (as the published evaluation scripts compute it).
"""
from __future__ import annotations

import json
import logging
import math

import pyarrow.dataset as pads

from . import storage
from .lmeval import results_json
from .names import check_name
from .paired import encode
from .shards import inspect_committed

log = logging.getLogger("xtp_ray")
COLUMNS = ["task", "split", "lang", "instance_id", "module", "source_layer", "target_layer", "correct",
           "metrics", "num_layers"]


def read_candidates(run_uri: str):
    """Every candidate row of a run as a pandas DataFrame (committed shards only)."""
    directory = storage.join(run_uri, "candidates")
    fs, path = storage.resolve(directory)
    committed, damaged = inspect_committed(directory)
    if damaged:
        name = min(damaged)
        raise ValueError(f"{len(damaged)} damaged candidate shard(s) under {directory} (e.g. {name}.parquet: "
                         f"{damaged[name]}); rerun the job to write them again")
    names = [f"{n}.parquet" for n in sorted(committed)]
    if not names:
        raise ValueError(f"no committed candidate shards under {directory}")
    dataset = pads.dataset([f"{path}/{n}" for n in names], filesystem=fs, format="parquet")
    frame = dataset.to_table(columns=COLUMNS).to_pandas()
    duplicated = frame.duplicated(["task", "split", "lang", "instance_id", "module", "source_layer", "target_layer"])
    if duplicated.any():
        raise ValueError(f"{int(duplicated.sum())} duplicate candidate rows under {directory}")
    return frame


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def _std(values) -> float:
    values = list(values)
    if not values:
        return float("nan")
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def summarise_group(frame) -> dict:
    """One (task, split, module, lang): vanilla, upper bound, best cell, marginals, heatmap."""
    vanilla = frame[frame["source_layer"].isna()]
    cells = frame[frame["source_layer"].notna()].astype({"source_layer": int, "target_layer": int})
    instances = sorted(frame["instance_id"].unique())
    n = len(instances)
    layers = int(frame["num_layers"].max())
    out = {"instances": n, "num_layers": layers,
           "vanilla_correct": int(vanilla["correct"].sum()), "vanilla_accuracy": float(vanilla["correct"].mean())}
    metric_means = {}
    for name in ("em", "f1", "js_similarity"):
        values = [json.loads(m).get(name) for m in vanilla["metrics"]]
        if any(v is not None for v in values):
            metric_means[name] = _mean(v for v in values if v is not None)
    out["vanilla_metrics"] = metric_means
    # per-instance outcomes the accuracies are made of, for paired tests across runs (`xtp history`)
    out["outcomes"] = {"vanilla": encode({str(i): bool(c) for i, c in zip(vanilla["instance_id"], vanilla["correct"])})}
    if cells.empty:
        return out
    solved = cells.groupby("instance_id")["correct"].any()
    out["outcomes"]["upper_bound"] = encode({str(i): bool(c) for i, c in solved.items()})
    out["upper_bound_correct"] = int(solved.sum())
    out["upper_bound"] = out["upper_bound_correct"] / n
    per_cell = cells.groupby(["source_layer", "target_layer"])["correct"].mean()
    best_value = per_cell.max()
    best = min(cell for cell, value in per_cell.items() if value == best_value)  # ties: smallest (i, j)
    out["best_cell"] = {"source_layer": int(best[0]), "target_layer": int(best[1]), "accuracy": float(best_value)}
    out["per_source_layer"] = {int(i): float(g.groupby("instance_id")["correct"].any().sum() / n)
                               for i, g in cells.groupby("source_layer")}
    out["per_target_layer"] = {int(j): float(g.groupby("instance_id")["correct"].any().sum() / n)
                               for j, g in cells.groupby("target_layer")}
    heatmap = [[None] * layers for _ in range(layers)]
    for (i, j), value in per_cell.items():
        heatmap[i][j] = float(value)
    out["heatmap"] = heatmap  # [source_layer][target_layer] accuracy; None where not searched
    column = cells[cells["target_layer"] == 0].groupby("source_layer")["correct"].sum()
    if not column.empty:
        top = column.max()
        out["target_first_counts"] = {int(i): int(c) for i, c in column.items()}
        out["target_first_choice"] = int(max(i for i, c in column.items() if c == top))  # ties: larger i
    return out


def aggregate_frame(frame) -> dict:
    groups = {}
    for (task, split, module, lang), group in frame.groupby(["task", "split", "module", "lang"], sort=True):
        groups.setdefault(f"{task}/{split}/{module}", {})[lang] = summarise_group(group)
    tables = {}
    for key, by_lang in groups.items():
        langs = sorted(by_lang)
        total = sum(g["instances"] for g in by_lang.values())
        table = {"languages": langs, "instances": total,
                 "vanilla_overall": sum(g["vanilla_correct"] for g in by_lang.values()) / total,
                 "vanilla_mean": _mean(g["vanilla_accuracy"] for g in by_lang.values()),
                 "vanilla_std": _std(g["vanilla_accuracy"] for g in by_lang.values())}
        if all("upper_bound" in g for g in by_lang.values()):
            table.update({
                "upper_bound_overall": sum(g["upper_bound_correct"] for g in by_lang.values()) / total,
                "upper_bound_mean": _mean(g["upper_bound"] for g in by_lang.values()),
                "upper_bound_std": _std(g["upper_bound"] for g in by_lang.values()),
                "best_cell_mean": _mean(g["best_cell"]["accuracy"] for g in by_lang.values()),
                "best_cell_std": _std(g["best_cell"]["accuracy"] for g in by_lang.values()),
            })
        table["by_lang"] = by_lang
        tables[key] = table
    return {"tables": tables, "target_first": target_first_selection(frame, groups)}


def target_first_selection(frame, groups) -> list[dict]:
    """Pick i* at j = 0 on the sample split, apply (i*, 0) to the unseen split (SPEC 2)."""
    out = []
    for key, by_lang in groups.items():
        task, split, module = key.split("/")
        if split != "sample":
            continue
        for lang, summary in by_lang.items():
            if "target_first_choice" not in summary:
                continue
            choice = summary["target_first_choice"]
            unseen = frame[(frame["task"] == task) & (frame["split"] == "unseen") & (frame["module"] == module)
                           & (frame["lang"] == lang)]
            entry = {"task": task, "module": module, "lang": lang, "source_layer": choice, "target_layer": 0}
            if not unseen.empty:
                applied = unseen[(unseen["source_layer"] == choice) & (unseen["target_layer"] == 0)]
                vanilla = unseen[unseen["source_layer"].isna()]
                if not applied.empty:
                    entry.update({"unseen_instances": int(vanilla["instance_id"].nunique()),
                                  "unseen_vanilla": float(vanilla["correct"].mean()),
                                  "unseen_applied": float(applied["correct"].mean()),
                                  "outcomes": encode({str(i): bool(c) for i, c in
                                                      zip(applied["instance_id"], applied["correct"])})})
            out.append(entry)
    return out


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
    uri = storage.join(run_uri, "manifest.json")
    if not storage.exists(uri):
        return None
    attempts = json.loads(storage.read_text(uri)).get("attempts") or []
    return min((a["started"] for a in attempts if "started" in a), default=None)


def run_uri_of(output: str, run_id: str) -> str:
    """<output>/<run_id>, the run id checked to be a name (it comes from a flag)."""
    return storage.join_under(output, check_name("run id", run_id))


def earlier_report_uri(output: str, compare_with: str) -> str:
    """The report.json of the run to compare with; ValueError, before any work, if it has none."""
    uri = storage.join(run_uri_of(output, compare_with), "report", "report.json")
    if not storage.exists(uri):
        raise ValueError(f"--compare-with {compare_with!r}: no report under {output} ({uri} not found)")
    return uri


def aggregate_run(output: str, run_id: str, compare_with: str | None = None) -> dict:
    """Write report.json, report.md, report.html and the figures under <output>/<run_id>/report/."""
    from .report import render_figures, render_html, render_markdown

    run_uri = run_uri_of(output, run_id)
    earlier_uri = earlier_report_uri(output, compare_with) if compare_with else None
    frame = read_candidates(run_uri)
    report = {"run_id": run_id, "started": run_started(run_uri), **aggregate_frame(frame)}
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
    manifest_uri = storage.join(run_uri, "manifest.json")
    run_config = json.loads(storage.read_text(manifest_uri)).get("config") if storage.exists(manifest_uri) else None
    storage.write_text(storage.join(report_uri, "results.json"), json.dumps(results_json(report, run_config), indent=1))
    storage.write_text(storage.join(report_uri, "report.md"), render_markdown(report))
    storage.write_text(storage.join(report_uri, "report.html"), render_html(report, figures))
    log.info("report: %s", storage.join(report_uri, "report.html"))
    return report

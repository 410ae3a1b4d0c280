"""The plain definition of a run's aggregates over its rows (pandas): the reference the per-shard
partials (`partials.py`) are held equal to, number for number, in the tests. It holds every row in
memory (~270 bytes a row), so the job aggregates from partials instead.

Accuracies follow SPEC 2: the instance-aware upper bound counts an instance as correct if any
searched cell answers it (vanilla excluded); overall figures are micro-averaged over instances; std
across languages is the population std (as the published evaluation scripts compute it).
"""
from __future__ import annotations

import json

import pyarrow.dataset as pads

from .. import storage
from ..candidates import intact_footers
from .paired import encode
from .partials import GROUP, METRICS, columns_of, group_id, row_summary
from .scaling import offline_scaling
from .stats import mean
from .tables import build_tables, target_first


def read_rows(run_uri: str):
    """Every candidate row of a run as a pandas DataFrame (committed shards only)."""
    directory = storage.join(run_uri, "candidates")
    fs, path = storage.resolve(directory)
    names = [f"{n}.parquet" for n in sorted(intact_footers(directory))]
    dataset = pads.dataset([f"{path}/{n}" for n in names], filesystem=fs, format="parquet")
    frame = dataset.to_table(columns=columns_of(dataset.schema)).to_pandas()
    duplicated = frame.duplicated(["task", "split", "lang", "instance_id", "module", "source_layer", "target_layer"])
    if duplicated.any():
        raise ValueError(f"{int(duplicated.sum())} duplicate candidate rows under {directory}")
    return frame


def by_group(frame):
    """The plain definition of a grouped task's figures: per (group, cell) correct only when every
    member row is, under the group's id; (frame, the rows' own figures (`partials.row_summary`) or None)."""
    if GROUP not in frame or frame[GROUP].isna().all():
        return frame, None
    first = frame.iloc[0]
    searched = frame[frame["source_layer"].notna()]
    cells = {(int(i), int(j)): [int(g["correct"].sum()), len(g)]
             for (i, j), g in searched.groupby(["source_layer", "target_layer"])}
    row_level = row_summary(frame["instance_id"].nunique(), int(frame[frame["source_layer"].isna()]["correct"].sum()),
                            int(searched.groupby("instance_id")["correct"].any().sum()), cells)
    reduced = frame.groupby([GROUP, "source_layer", "target_layer"], dropna=False).agg(
        correct=("correct", "all"), num_layers=("num_layers", "max")).reset_index()
    reduced["instance_id"] = [group_id(first["task"], first["split"], first["lang"], g) for g in reduced[GROUP]]
    reduced["metrics"] = "{}"
    return reduced, row_level


def summarise_group(frame) -> dict:
    """One (task, split, module, lang): vanilla, upper bound, best cell, marginals, heatmap."""
    frame, row_level = by_group(frame)
    vanilla = frame[frame["source_layer"].isna()]
    cells = frame[frame["source_layer"].notna()].astype({"source_layer": int, "target_layer": int})
    instances = sorted(frame["instance_id"].unique())
    n = len(instances)
    layers = int(frame["num_layers"].max())
    out = {"instances": n, "num_layers": layers, "vanilla_instances": len(vanilla),
           "vanilla_correct": int(vanilla["correct"].sum()), "vanilla_accuracy": float(vanilla["correct"].mean())}
    metric_means = {}
    for name in METRICS:
        values = [json.loads(m).get(name) for m in vanilla["metrics"]]
        if any(v is not None for v in values):
            metric_means[name] = mean(v for v in values if v is not None)
    out["vanilla_metrics"] = metric_means
    if row_level is not None:
        out.update(row_level)
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
    at_best = cells[(cells["source_layer"] == best[0]) & (cells["target_layer"] == best[1])]["correct"]
    out["best_cell"] = {"source_layer": int(best[0]), "target_layer": int(best[1]), "accuracy": float(best_value),
                        "correct": int(at_best.sum()), "rows": len(at_best)}
    out.update(summarise_metrics(cells))
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


def summarise_metrics(cells) -> dict:
    """Each task metric over the searched cells: `best_cell_metrics` (the cell with the highest mean of
    that metric, ties: smallest (i, j)) and `upper_bound_metrics` (per instance the max over its searched
    cells, averaged over instances). Rows without the metric are left out of its figures."""
    parsed = [json.loads(m) if m else {} for m in cells["metrics"]]
    best_metrics, upper_metrics = {}, {}
    for name in METRICS:
        values = cells.assign(value=[p.get(name) for p in parsed]).dropna(subset=["value"])
        if values.empty:
            continue
        per_cell = {cell: mean(float(v) for v in g["value"]) for cell, g in values.groupby(["source_layer",
                                                                                              "target_layer"])}
        top = max(per_cell.values())
        best = min(cell for cell, value in per_cell.items() if value == top)  # ties: smallest (i, j)
        best_metrics[name] = {"source_layer": int(best[0]), "target_layer": int(best[1]), "value": float(top)}
        upper_metrics[name] = mean(float(v) for v in values.groupby("instance_id")["value"].max())
    return {"best_cell_metrics": best_metrics, "upper_bound_metrics": upper_metrics} if best_metrics else {}


def aggregate_frame(frame) -> dict:
    groups = {}
    for (task, split, module, lang), group in frame.groupby(["task", "split", "module", "lang"], sort=True):
        groups.setdefault(f"{task}/{split}/{module}", {})[lang] = summarise_group(group)
    tables = build_tables(groups)
    return {"tables": tables, "target_first": target_first_selection(frame, groups),
            "offline_scaling": offline_scaling(tables)}


def target_first_selection(frame, groups) -> list[dict]:
    """Pick i* at j = 0 on the sample split, apply (i*, 0) to the unseen split (SPEC 2), over rows."""

    def applied_of(task, module, lang, choice):
        unseen = frame[(frame["task"] == task) & (frame["split"] == "unseen") & (frame["module"] == module)
                       & (frame["lang"] == lang)]
        applied = unseen[(unseen["source_layer"] == choice) & (unseen["target_layer"] == 0)]
        if applied.empty:
            return None
        vanilla = unseen[unseen["source_layer"].isna()]
        return {"unseen_instances": int(vanilla["instance_id"].nunique()),
                "unseen_vanilla": float(vanilla["correct"].mean()),
                "unseen_applied": float(applied["correct"].mean()),
                "outcomes": encode({str(i): bool(c) for i, c in zip(applied["instance_id"], applied["correct"])})}

    return target_first(groups, applied_of)

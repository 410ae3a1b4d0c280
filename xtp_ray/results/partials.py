"""Per-shard partial aggregates: what a report is made of, with memory independent of rows.

A shard's partials are computed from its candidate rows with numpy (no row loop) and
committed in the shard's own Parquet footer (key `xtp_partials`), so they are written
whole with the shard or not at all. Per (task, split, module, lang) group:

- per searched cell (source layer i, target layer j): correct and row counts;
- per task metric (EM, F1, JS similarity) and searched cell: the rows that have it and their sum, as a
  few floats whose exact sum is the exact sum (`stats.exact_terms`), so that merged shards give the
  mean `stats.mean` gives over every row, bit for bit, in any order;
- per instance: vanilla correct, its vanilla metrics, whether any searched cell is correct, three
  bitsets over layers (Python ints as hex, any width): source layers i with a correct cell (i, *),
  target layers j with a correct cell (*, j), and source layers i with (i, 0) correct (the target-first
  column); and per metric its max over the instance's searched cells (the metric's upper bound).

Where a task groups its instances (CulturalBench: a question is right only when its four rows are),
the rows are first reduced to one per (group, cell) (`by_group`), so every figure counts groups;
the rows' own vanilla accuracy is kept beside (`row_level`). Shards never split a group.

`merge` adds shards' partials (refusing an instance seen in two shards); `summarise`
turns a merged group into exactly the numbers `summarise_rows` (the plain pandas
definition, kept for tests) gives on the same rows.
"""
from __future__ import annotations

import json

import numpy as np

from .stats import exact_terms, mean, mean_of_terms

KEY = "xtp_partials"
VERSION = 2  # 2: per-cell metric sums and per-instance metric maxima. A shard of version 1 is read from its rows
METRICS = ("em", "f1", "js_similarity")
COLUMNS = ["task", "split", "lang", "instance_id", "module", "source_layer", "target_layer", "correct", "metrics",
           "num_layers"]
GROUP = "group"  # optional column (shards written before groups lack it): the instances scored together


def columns_of(schema) -> list[str]:
    """The columns a summary reads from a shard of this schema: COLUMNS, and the group where it is."""
    return COLUMNS + ([GROUP] if GROUP in schema.names else [])


def group_id(task: str, split: str, lang: str, group: str) -> str:
    """The instance id a group of instances is counted under."""
    return f"{task}/{split}/{lang}/group-{group}"


def by_group(rows):
    """Rows of instances scored together (CulturalBench's four per question) as one row per (group,
    cell): correct only when every member is, under the group's id; metrics dropped. Rows without a
    group stay as they are. Returns (rows, the rows' own figures (`row_level`) or None)."""
    import pyarrow as pa

    if GROUP not in rows.column_names or rows.column(GROUP).null_count == rows.num_rows:
        return rows, None
    if rows.column(GROUP).null_count:
        raise ValueError("a task's rows are grouped in part only: every instance of a grouped task needs its group")
    row_figures = row_level(rows)
    reduced = rows.group_by([GROUP, "source_layer", "target_layer"], use_threads=False).aggregate(
        [("correct", "min"), ("num_layers", "max")])
    first = {name: rows.column(name)[0].as_py() for name in ("task", "split", "lang", "module")}
    n = reduced.num_rows
    ids = [group_id(first["task"], first["split"], first["lang"], g) for g in reduced.column(GROUP).to_pylist()]
    table = pa.table({"task": [first["task"]] * n, "split": [first["split"]] * n, "lang": [first["lang"]] * n,
                      "instance_id": ids, "module": [first["module"]] * n,
                      "source_layer": reduced.column("source_layer"), "target_layer": reduced.column("target_layer"),
                      "correct": reduced.column("correct_min"), "metrics": ["{}"] * n,
                      "num_layers": reduced.column("num_layers_max")})
    return table, row_figures


def row_level(rows) -> list:
    """A grouped task's figures over its rows, each row scored alone: [row instances, vanilla correct, rows
    right under some searched cell, per searched cell [i, j, correct, rows]]. Shards never split a group, so
    every entry adds up across shards."""
    ids = rows.column("instance_id").dictionary_encode().combine_chunks()
    code = ids.indices.to_numpy()
    vanilla = rows.column("source_layer").is_null().to_numpy(zero_copy_only=False)
    correct = rows.column("correct").to_numpy(zero_copy_only=False).astype(bool)
    i = rows.column("source_layer").fill_null(0).to_numpy().astype(np.int64)
    j = rows.column("target_layer").fill_null(0).to_numpy().astype(np.int64)
    searched = ~vanilla
    solved = int((np.bincount(code[searched & correct], minlength=len(ids.dictionary)) > 0).sum())
    cells = {}
    for a, b, c in zip(i[searched].tolist(), j[searched].tolist(), correct[searched].tolist()):
        entry = cells.setdefault((a, b), [0, 0])
        entry[0] += c
        entry[1] += 1
    return [len(ids.dictionary), int(correct[vanilla].sum()), solved,
            [[a, b, c, n] for (a, b), (c, n) in sorted(cells.items())]]


class DuplicateError(ValueError):
    pass


def _bits(rows: np.ndarray) -> list[str]:
    """Each row of a bool matrix [instances, layers] as a hex int (bit k = layer k)."""
    packed = np.packbits(rows, axis=1, bitorder="little")
    return [format(int.from_bytes(row.tobytes(), "little"), "x") for row in packed]


def shard_partials(table, source: str = "shard") -> dict:
    """Partials of one shard's candidate rows (a pyarrow Table with `COLUMNS`).

    Raises DuplicateError when a (instance, module, cell) appears twice in the shard."""
    import pyarrow.compute as pc

    groups = {}
    import pyarrow as pa

    parts = [table.column(c).cast(pa.string()) for c in ("task", "split", "module", "lang")]
    key_column = pc.binary_join_element_wise(*parts, "/")
    keys = sorted(pc.unique(key_column).to_pylist())
    for key in keys:
        rows = table.filter(pc.equal(key_column, key)) if len(keys) > 1 else table
        rows, row_figures = by_group(rows)
        groups[key] = _group_partials(rows, f"{source} {key}")
        if row_figures is not None:
            groups[key]["row_level"] = row_figures
    return {"version": VERSION, "groups": groups}


def _group_partials(rows, where: str) -> dict:
    layers = int(rows.column("num_layers").to_numpy().max())
    ids = rows.column("instance_id").dictionary_encode().combine_chunks()
    instance_ids = ids.dictionary.to_pylist()
    code = ids.indices.to_numpy()
    n = len(instance_ids)
    source = rows.column("source_layer")
    vanilla = source.is_null().to_numpy(zero_copy_only=False)
    i = source.fill_null(0).to_numpy().astype(np.int64)
    j = rows.column("target_layer").fill_null(0).to_numpy().astype(np.int64)
    correct = rows.column("correct").to_numpy(zero_copy_only=False).astype(bool)
    cell = np.where(vanilla, layers * layers, i * layers + j)  # vanilla: one past the last cell
    flat = code.astype(np.int64) * (layers * layers + 1) + cell
    if len(np.unique(flat)) != len(flat):
        raise DuplicateError(f"{where}: duplicate candidate rows (an instance, module and cell written twice)")
    searched = ~vanilla
    cell_rows = np.bincount(cell[searched], minlength=layers * layers)
    cell_correct = np.bincount(cell[searched], weights=correct[searched], minlength=layers * layers).astype(np.int64)
    hit = searched & correct
    any_cell = np.bincount(code[hit], minlength=n) > 0
    has_cell = np.bincount(code[searched], minlength=n) > 0

    def layer_bits(layer_of: np.ndarray, mask: np.ndarray) -> list[str]:
        matrix = np.zeros((n, layers), dtype=bool)
        matrix[code[mask], layer_of[mask]] = True
        return _bits(matrix)

    by_source, by_target = layer_bits(i, hit), layer_bits(j, hit)
    first_column = layer_bits(i, hit & (j == 0))
    metric_cells, metric_max = {}, {}
    for name, (values, valid) in metric_values(rows).items():
        use = searched & valid
        if not use.any():
            continue
        order = np.argsort(cell[use], kind="stable")
        at, sorted_values = cell[use][order], values[use][order]
        starts = np.flatnonzero(np.r_[True, at[1:] != at[:-1]])
        ends = np.r_[starts[1:], len(at)]
        metric_cells[name] = [[int(at[s] // layers), int(at[s] % layers), int(e - s),
                               exact_terms(sorted_values[s:e].tolist())] for s, e in zip(starts, ends)]
        top = np.full(n, -np.inf)
        np.maximum.at(top, code[use], values[use])
        metric_max[name] = top, np.bincount(code[use], minlength=n) > 0
    vanilla_correct = {}
    metrics_of = {}
    at = np.flatnonzero(vanilla)
    for k, text in zip(at, rows.column("metrics").take(at).to_pylist()):
        vanilla_correct[int(code[k])] = bool(correct[k])
        values = json.loads(text) if text else {}
        metrics_of[int(code[k])] = [values.get(name) for name in METRICS]
    instances = {}
    for k, instance in enumerate(instance_ids):
        maxima = [float(metric_max[name][0][k]) if name in metric_max and metric_max[name][1][k] else None
                  for name in METRICS]
        instances[instance] = [vanilla_correct.get(k), bool(any_cell[k]) if has_cell[k] else None,
                               by_source[k], by_target[k], first_column[k], metrics_of.get(k, [None] * 3), maxima]
    nonzero = np.flatnonzero(cell_rows)
    return {"num_layers": layers, "cells": [[int(c // layers), int(c % layers), int(cell_correct[c]), int(cell_rows[c])]
                                            for c in nonzero],
            "metric_cells": metric_cells, "instances": instances}


def metric_values(rows) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per task metric present in the rows' metrics JSON: (values as float64, where the row has it)."""
    texts = rows.column("metrics").to_pylist()
    if all(not t or t == "{}" for t in texts):
        return {}
    parsed = [json.loads(t) if t else {} for t in texts]
    out = {}
    for name in METRICS:
        column = [p.get(name) for p in parsed]
        valid = np.array([v is not None for v in column], dtype=bool)
        if valid.any():
            out[name] = np.array([float(v) if v is not None else 0.0 for v in column], dtype=np.float64), valid
    return out


def to_footer(partials: dict) -> str:
    return json.dumps(partials, separators=(",", ":"))


def from_footer(text: str | None) -> dict | None:
    if not text:
        return None
    partials = json.loads(text)
    return partials if partials.get("version") == VERSION else None


class Merged:
    """Partials of many shards added up, group by group; memory ~ groups x (layers^2 + instances)."""

    def __init__(self):
        self.groups: dict[str, dict] = {}
        self.owner: dict[tuple[str, str], str] = {}

    def add(self, partials: dict, shard: str) -> None:
        for key, part in partials["groups"].items():
            layers = part["num_layers"]
            group = self.groups.setdefault(key, {"num_layers": layers, "correct": np.zeros((layers, layers), np.int64),
                                                 "rows": np.zeros((layers, layers), np.int64), "instances": {}})
            if layers != group["num_layers"]:
                grown = max(layers, group["num_layers"])
                for name in ("correct", "rows"):
                    padded = np.zeros((grown, grown), np.int64)
                    old = group[name]
                    padded[:old.shape[0], :old.shape[1]] = old
                    group[name] = padded
                group["num_layers"] = grown
            for i, j, correct, rows in part["cells"]:
                group["correct"][i, j] += correct
                group["rows"][i, j] += rows
            for name, cells in part["metric_cells"].items():  # (i, j) -> [rows with the metric, exact terms]
                sums = group.setdefault("metric_cells", {}).setdefault(name, {})
                for i, j, count, terms in cells:
                    earlier = sums.get((i, j))
                    sums[(i, j)] = ([earlier[0] + count, exact_terms(earlier[1] + terms)] if earlier
                                    else [count, terms])
            if "row_level" in part:  # a grouped task: its rows' own figures beside the groups'
                totals = group.setdefault("row_level", [0, 0, 0, {}])
                for k in range(3):
                    totals[k] += part["row_level"][k]
                for i, j, correct, rows in part["row_level"][3]:
                    cell = totals[3].setdefault((i, j), [0, 0])
                    cell[0] += correct
                    cell[1] += rows
            for instance, outcome in part["instances"].items():
                earlier = self.owner.setdefault((key, instance), shard)
                if earlier != shard:
                    raise DuplicateError(f"instance {instance} ({key}) is in two shards: {earlier} and {shard}")
                group["instances"][instance] = outcome


def summarise(group: dict) -> dict:
    """One merged (task, split, module, lang) group: the numbers of `aggregation.summarise_rows`."""
    from .paired import encode

    layers = group["num_layers"]
    instances = group["instances"]
    n = len(instances)
    vanilla = {i: o[0] for i, o in instances.items() if o[0] is not None}
    out = {"instances": n, "num_layers": layers, "vanilla_instances": len(vanilla),
           "vanilla_correct": sum(vanilla.values()),
           "vanilla_accuracy": sum(vanilla.values()) / len(vanilla) if vanilla else float("nan")}
    metric_means = {}
    for k, name in enumerate(METRICS):
        values = [o[5][k] for i, o in sorted(instances.items()) if o[0] is not None and o[5][k] is not None]
        if values:
            metric_means[name] = mean(values)
    out["vanilla_metrics"] = metric_means
    if "row_level" in group:  # counted by group above; the rows' own figures beside them
        out.update(row_summary(*group["row_level"]))
    out["outcomes"] = {"vanilla": encode(vanilla)}
    searched = group["rows"] > 0
    if not searched.any():
        return out
    solved = {i: o[1] for i, o in instances.items() if o[1] is not None}
    out["outcomes"]["upper_bound"] = encode(solved)
    out["upper_bound_correct"] = sum(solved.values())
    out["upper_bound"] = out["upper_bound_correct"] / n
    accuracy = np.full((layers, layers), np.nan)
    accuracy[searched] = group["correct"][searched] / group["rows"][searched]
    best_value = accuracy[searched].max()
    best = min((int(i), int(j)) for i, j in zip(*np.nonzero(searched)) if accuracy[i, j] == best_value)
    out["best_cell"] = {"source_layer": best[0], "target_layer": best[1], "accuracy": float(best_value),
                        "correct": int(group["correct"][best]), "rows": int(group["rows"][best])}
    out.update(summarise_metrics(group))
    sources = sorted({int(i) for i in np.nonzero(searched)[0]})
    targets = sorted({int(j) for j in np.nonzero(searched)[1]})
    src = [int(o[2], 16) for o in instances.values()]
    tgt = [int(o[3], 16) for o in instances.values()]
    out["per_source_layer"] = {i: sum(b >> i & 1 for b in src) / n for i in sources}
    out["per_target_layer"] = {j: sum(b >> j & 1 for b in tgt) / n for j in targets}
    out["heatmap"] = [[float(accuracy[i, j]) if searched[i, j] else None for j in range(layers)] for i in range(layers)]
    column = {i: int(group["correct"][i, 0]) for i in range(layers) if searched[i, 0]}
    if column:
        top = max(column.values())
        out["target_first_counts"] = column
        out["target_first_choice"] = max(i for i, c in column.items() if c == top)  # ties: larger i
    return out


def row_summary(instances: int, vanilla_correct: int, solved: int, cells: dict) -> dict:
    """A grouped task's rows, each scored alone: vanilla, upper bound and best cell (ties: smallest (i, j)).
    cells: (i, j) -> [correct, rows]."""
    out = {"row_instances": instances, "row_vanilla_correct": vanilla_correct,
           "row_vanilla_accuracy": vanilla_correct / instances if instances else float("nan")}
    if cells:
        out.update({"row_upper_bound_correct": solved, "row_upper_bound": solved / instances})
        top = max(c / n for c, n in cells.values())
        best = min(cell for cell, (c, n) in cells.items() if c / n == top)
        out["row_best_cell"] = {"source_layer": int(best[0]), "target_layer": int(best[1]), "accuracy": top,
                                "correct": int(cells[best][0]), "rows": int(cells[best][1])}
    return out


def summarise_metrics(group: dict) -> dict:
    """Best cell and upper bound of each task metric (the numbers of `rows.summarise_metrics`)."""
    best_metrics, upper_metrics = {}, {}
    for k, name in enumerate(METRICS):
        sums = (group.get("metric_cells") or {}).get(name)
        if not sums:
            continue
        per_cell = {cell: mean_of_terms(terms, count) for cell, (count, terms) in sums.items()}
        top = max(per_cell.values())
        best = min(cell for cell, value in per_cell.items() if value == top)  # ties: smallest (i, j)
        best_metrics[name] = {"source_layer": int(best[0]), "target_layer": int(best[1]), "value": float(top)}
        upper_metrics[name] = mean(o[6][k] for o in group["instances"].values() if o[6][k] is not None)
    return {"best_cell_metrics": best_metrics, "upper_bound_metrics": upper_metrics} if best_metrics else {}


def applied_first_column(group: dict, choice: int) -> dict | None:
    """The target-first cell (choice, 0) applied to an (unseen) group: n, vanilla, applied, outcomes."""
    from .paired import encode

    layers = group["num_layers"]
    if choice >= layers or group["rows"][choice, 0] == 0:
        return None
    instances = group["instances"]
    vanilla = [o[0] for o in instances.values() if o[0] is not None]
    applied = {i: bool(int(o[4], 16) >> choice & 1) for i, o in instances.items() if o[1] is not None}
    return {"unseen_instances": len(vanilla), "unseen_vanilla": sum(vanilla) / len(vanilla),
            "unseen_applied": int(group["correct"][choice, 0]) / int(group["rows"][choice, 0]),
            "outcomes": encode(applied)}

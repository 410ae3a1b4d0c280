"""The paper's offline scaling table, with numbers: per task type its granularity and fixed setting, and
vanilla against transplanted accuracy on in-distribution and out-of-distribution data, per language
and as mean ± std across languages.

A row is made from a report's tables whose grid is one cell (`xtp run --cells coarse`): the tasks
say their type (`Task.family`) and their side (`Task.offline_scaling`: ID or OOD); the cell's
accuracy is the transplanted one. Tasks that are not registered here (an own task another process
read) or have no side are left out.
"""
from __future__ import annotations

from .stats import mean, std

TYPES = ("understanding", "generation", "culture")


def _layer_name(index: int, layers: int) -> str:
    return "first" if index == 0 else "last" if index == layers - 1 else str(index)


def single_cell(summary: dict) -> tuple[int, int] | None:
    """(source, target) of a one-cell grid, else None."""
    searched = [(i, j) for i, row in enumerate(summary.get("heatmap") or []) for j, v in enumerate(row)
                if v is not None]
    return searched[0] if len(searched) == 1 else None


def _side(table: dict, cell: tuple[int, int]) -> dict:
    by_lang = {lang: {"instances": g["instances"], "vanilla": g["vanilla_accuracy"],
                      "transplanted": g["best_cell"]["accuracy"]} for lang, g in table["by_lang"].items()}
    vanilla = [v["vanilla"] for v in by_lang.values()]
    applied = [v["transplanted"] for v in by_lang.values()]
    return {"by_lang": by_lang, "vanilla_mean": mean(vanilla), "vanilla_std": std(vanilla),
            "transplanted_mean": mean(applied), "transplanted_std": std(applied)}


def offline_scaling(tables: dict) -> list[dict]:
    """One row per task type with a one-cell grid on its ID or OOD data (see the module docstring)."""
    from ..tasks import get, names

    rows = {}
    for key, table in tables.items():
        task, split, module = key.split("/")
        if task not in names() or get(task).offline_scaling is None:
            continue
        first = next(iter(table["by_lang"].values()))
        cell = single_cell(first)
        if cell is None or any(single_cell(g) != cell for g in table["by_lang"].values()):
            continue
        layers = len(first["heatmap"])
        definition = get(task)
        row = rows.setdefault((definition.family, module), {
            "task_type": definition.family, "granularity": module,
            "setting": f"({_layer_name(cell[0], layers)}, {_layer_name(cell[1], layers)})",
            "source_layer": cell[0], "target_layer": cell[1]})
        earlier = row.get(definition.offline_scaling)
        if earlier is None or (earlier["split"] != "unseen" and split == "unseen"):  # the unseen data first
            row[definition.offline_scaling] = {"task": task, "split": split, **_side(table, cell)}
    return [rows[k] for k in sorted(rows, key=lambda k: (TYPES.index(k[0]) if k[0] in TYPES else 9, k[1]))]

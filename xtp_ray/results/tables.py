"""Per-language summaries to a task's table: micro overall, mean and std across languages, each
accuracy's 95% Wilson interval, and each task metric's mean and std across languages."""
from __future__ import annotations

from .paired import wilson
from .stats import mean, std


def intervals(summary: dict) -> dict:
    """95% Wilson intervals of a language's accuracies: vanilla, best cell (over its rows), upper bound; and
    for a grouped task the same over its rows, each scored alone."""
    out = {"vanilla": list(wilson(summary["vanilla_correct"], summary["vanilla_instances"]))}
    if "best_cell" in summary:
        out["best_cell"] = list(wilson(summary["best_cell"]["correct"], summary["best_cell"]["rows"]))
        out["upper_bound"] = list(wilson(summary["upper_bound_correct"], summary["instances"]))
    if "row_instances" in summary:
        out["row_vanilla"] = list(wilson(summary["row_vanilla_correct"], summary["row_instances"]))
    if "row_best_cell" in summary:
        out["row_best_cell"] = list(wilson(summary["row_best_cell"]["correct"], summary["row_best_cell"]["rows"]))
        out["row_upper_bound"] = list(wilson(summary["row_upper_bound_correct"], summary["row_instances"]))
    return out


def metric_spread(by_lang: dict[str, dict]) -> dict:
    """Per task metric: mean and std across the languages that have it, of vanilla, best cell, upper bound."""
    out = {}
    names = sorted({m for g in by_lang.values() for m in g.get("vanilla_metrics") or {}}
                   | {m for g in by_lang.values() for m in g.get("best_cell_metrics") or {}})
    for name in names:
        entry = {}
        for figure, values in (
                ("vanilla", [g["vanilla_metrics"][name] for g in by_lang.values()
                             if name in (g.get("vanilla_metrics") or {})]),
                ("best_cell", [g["best_cell_metrics"][name]["value"] for g in by_lang.values()
                               if name in (g.get("best_cell_metrics") or {})]),
                ("upper_bound", [g["upper_bound_metrics"][name] for g in by_lang.values()
                                 if name in (g.get("upper_bound_metrics") or {})])):
            if values:
                entry.update({f"{figure}_mean": mean(values), f"{figure}_std": std(values),
                              f"{figure}_langs": len(values)})
        out[name] = entry
    return out


def build_tables(groups: dict[str, dict[str, dict]]) -> dict:
    """groups: "task/split/module" -> lang -> summary (inserted in sorted order) -> tables."""
    tables = {}
    for key, by_lang in groups.items():
        langs = sorted(by_lang)
        total = sum(g["instances"] for g in by_lang.values())
        table = {"languages": langs, "instances": total,
                 "vanilla_overall": sum(g["vanilla_correct"] for g in by_lang.values()) / total,
                 "vanilla_mean": mean(g["vanilla_accuracy"] for g in by_lang.values()),
                 "vanilla_std": std(g["vanilla_accuracy"] for g in by_lang.values())}
        if all("upper_bound" in g for g in by_lang.values()):
            table.update({
                "upper_bound_overall": sum(g["upper_bound_correct"] for g in by_lang.values()) / total,
                "upper_bound_mean": mean(g["upper_bound"] for g in by_lang.values()),
                "upper_bound_std": std(g["upper_bound"] for g in by_lang.values()),
                "best_cell_mean": mean(g["best_cell"]["accuracy"] for g in by_lang.values()),
                "best_cell_std": std(g["best_cell"]["accuracy"] for g in by_lang.values()),
            })
        for g in by_lang.values():
            g["intervals"] = intervals(g)
        metrics = metric_spread(by_lang)
        if metrics:
            table["metrics"] = metrics
        table["by_lang"] = by_lang
        tables[key] = table
    return tables


def target_first(groups: dict[str, dict[str, dict]], applied_of) -> list[dict]:
    """Pick i* at j = 0 on the sample split, apply (i*, 0) to the unseen split (SPEC 2).

    applied_of(task, module, lang, i*) -> the unseen split's numbers under (i*, 0), or None."""
    out = []
    for key, by_lang in groups.items():
        task, split, module = key.split("/")
        if split != "sample":
            continue
        for lang, summary in by_lang.items():
            if "target_first_choice" not in summary:
                continue
            choice = summary["target_first_choice"]
            entry = {"task": task, "module": module, "lang": lang, "source_layer": choice, "target_layer": 0}
            entry.update(applied_of(task, module, lang, choice) or {})
            out.append(entry)
    return out

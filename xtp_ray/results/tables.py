"""Per-language summaries to a task's table: micro overall, mean and std across languages."""
from __future__ import annotations

from .stats import mean, std


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

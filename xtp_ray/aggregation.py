"""From committed candidate shards to tables, the upper bound, best cells and heatmaps.

Reads only `<run>/candidates/*.parquet` (committed shards; temporary files live
elsewhere). Accuracies follow SPEC 2: the instance-aware upper bound counts an
instance as correct if any searched cell answers it (vanilla excluded); overall
figures are micro-averaged over instances; std across languages is the
population std (as the published evaluation scripts compute it).
"""
from __future__ import annotations

import io
import json
import logging
import math

import pyarrow.dataset as pads

from . import storage

log = logging.getLogger("xtp_ray")
COLUMNS = ["task", "split", "lang", "instance_id", "module", "source_layer", "target_layer", "correct",
           "metrics", "num_layers"]


def read_candidates(run_uri: str):
    """Every candidate row of a run as a pandas DataFrame (committed shards only)."""
    directory = storage.join(run_uri, "candidates")
    fs, path = storage.resolve(directory)
    names = [n for n in storage.list_names(directory) if n.endswith(".parquet")]
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
    if cells.empty:
        return out
    solved = cells.groupby("instance_id")["correct"].any()
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
                                  "unseen_applied": float(applied["correct"].mean())})
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


def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def render_markdown(report: dict) -> str:
    lines = [f"# xtp-ray report: run `{report['run_id']}`", ""]
    for key, table in report["tables"].items():
        lines += [f"## {key}", "",
                  f"{table['instances']} instances, {len(table['languages'])} languages. Accuracy in %; "
                  "upper bound = any searched cell correct.", "",
                  "| lang | n | vanilla | upper bound | best cell | best (i, j) | target-first i* |",
                  "|---|---|---|---|---|---|---|"]
        for lang in table["languages"]:
            g = table["by_lang"][lang]
            best = g.get("best_cell")
            lines.append(f"| {lang} | {g['instances']} | {_pct(g['vanilla_accuracy'])} | {_pct(g.get('upper_bound'))} "
                         f"| {_pct(best['accuracy']) if best else '-'} | "
                         f"{(best['source_layer'], best['target_layer']) if best else '-'} | "
                         f"{g.get('target_first_choice', '-')} |")
        lines.append(f"| **mean ± std** | {table['instances']} | {_pct(table['vanilla_mean'])} ± "
                     f"{_pct(table['vanilla_std'])} | {_pct(table.get('upper_bound_mean'))} ± "
                     f"{_pct(table.get('upper_bound_std'))} | {_pct(table.get('best_cell_mean'))} ± "
                     f"{_pct(table.get('best_cell_std'))} | | |")
        lines.append(f"| **overall (micro)** | | {_pct(table['vanilla_overall'])} | "
                     f"{_pct(table.get('upper_bound_overall'))} | | | |")
        lines.append("")
    if report["target_first"]:
        lines += ["## Target-first selection (sample -> unseen)", "",
                  "| task | module | lang | (i*, 0) | unseen vanilla | unseen applied |", "|---|---|---|---|---|---|"]
        for e in report["target_first"]:
            lines.append(f"| {e['task']} | {e['module']} | {e['lang']} | ({e['source_layer']}, 0) | "
                         f"{_pct(e.get('unseen_vanilla'))} | {_pct(e.get('unseen_applied'))} |")
        lines.append("")
    if report.get("compared_with"):
        lines += [f"## Compared with run `{report['compared_with']}`", "",
                  "| table | lang | vanilla Δ | upper bound Δ |", "|---|---|---|---|"]
        for d in report["deltas"]:
            lines.append(f"| {d['table']} | {d['lang']} | {_pct(d['vanilla_delta'])} | {_pct(d.get('upper_bound_delta'))} |")
        lines.append("")
    lines += ["## Figures", ""] + [f"- `{name}`" for name in report["figures"]]
    return "\n".join(lines) + "\n"


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def render_figures(report: dict) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = {}
    for key, table in report["tables"].items():
        for lang, g in table["by_lang"].items():
            if "heatmap" not in g:
                continue
            grid = [[float("nan") if v is None else 100 * v for v in row] for row in g["heatmap"]]
            fig, ax = plt.subplots(figsize=(4.8, 4))
            image = ax.imshow(grid, origin="lower", cmap="viridis", vmin=0, vmax=100)
            ticks = list(range(0, len(grid), max(1, len(grid) // 8)))
            ax.set_xticks(ticks)
            ax.set_yticks(ticks)
            ax.set_xlabel("target layer j (recipient)")
            ax.set_ylabel("source layer i (donor)")
            ax.set_title(f"{key} {lang}: accuracy % (vanilla {_pct(g['vanilla_accuracy'])})", fontsize=8)
            fig.colorbar(image, ax=ax)
            figures[f"heatmaps/{key.replace('/', '-')}-{lang}.png"] = _png(fig)
            plt.close(fig)
    keys = list(report["tables"])
    if keys:
        fig, axes = plt.subplots(len(keys), 1, figsize=(8, 2.8 * len(keys)), squeeze=False)
        for ax, key in zip(axes[:, 0], keys):
            table = report["tables"][key]
            langs = table["languages"]
            xs = range(len(langs))
            ax.bar([x - 0.2 for x in xs], [100 * table["by_lang"][l]["vanilla_accuracy"] for l in langs], 0.4,
                   label="vanilla")
            ax.bar([x + 0.2 for x in xs], [100 * table["by_lang"][l].get("upper_bound", float("nan")) for l in langs],
                   0.4, label="upper bound")
            ax.set_xticks(list(xs), langs)
            ax.set_ylabel("accuracy %")
            ax.set_title(key)
            ax.legend(fontsize=7)
        fig.tight_layout()
        figures["overview.png"] = _png(fig)
        plt.close(fig)
    return figures


def aggregate_run(output: str, run_id: str, compare_with: str | None = None) -> dict:
    """Write report.json, report.md and the figures under <output>/<run_id>/report/."""
    run_uri = storage.join(output, run_id)
    frame = read_candidates(run_uri)
    report = {"run_id": run_id, **aggregate_frame(frame)}
    if compare_with:
        earlier = json.loads(storage.read_text(storage.join(output, compare_with, "report", "report.json")))
        report["compared_with"] = compare_with
        report["deltas"] = compare(report, earlier)
    figures = render_figures(report)
    report["figures"] = sorted(figures)
    report_uri = storage.join(run_uri, "report")
    for name, data in figures.items():
        storage.write_bytes(storage.join(report_uri, name), data)
    storage.write_text(storage.join(report_uri, "report.json"), json.dumps(report, indent=1))
    storage.write_text(storage.join(report_uri, "report.md"), render_markdown(report))
    log.info("report: %s", storage.join(report_uri, "report.md"))
    return report

"""A run's report as people read it: Markdown, one self-contained HTML page, PNG figures.

The header names what was run (model, revision, engine, dtype, scoring, data root). Per table: the
accuracies with their 95% Wilson intervals (a grouped task counts questions, its rows beside them),
then each task metric (EM, F1, 1 - JS) for vanilla, its best cell and its upper bound.

Figures (matplotlib, Agg): per (table, language) a heatmap of accuracy minus vanilla
over [source layer i][target layer j], on a diverging colour map centred at 0 with
the best cell marked where it beats vanilla, and the per-source / per-target marginals as line
plots; one overview bar chart with Wilson intervals. Accuracy axes start at 0. `report.html` embeds
every figure as a data: URI and uses no script, font or stylesheet from elsewhere, so it reads
straight from object storage.
"""
from __future__ import annotations

import base64
import html
import io
import math
import re

from ..names import is_name
from . import leftout
from .markup import html_table
from .scaling import single_cell

PAGE_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1200px;color:#222;
padding:0 1em}
table{border-collapse:collapse;margin:0.6em 0 1.4em}
th,td{border:1px solid #ccc;padding:3px 9px;text-align:right}
td{white-space:nowrap}
.scroll{overflow-x:auto;max-width:100%}
details{margin:0 0 1.4em}summary{cursor:pointer;color:#555}
th:first-child,td:first-child{text-align:left}
th{background:#f3f3f3}
tr.summary td{font-weight:600;background:#fafafa}
.figures{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0}
figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:0.8em;color:#555}
.pos{color:#1a7f37}.neg{color:#cf222e}
"""


def pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def signed_pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:+.1f}"


def with_interval(value, interval) -> str:
    """An accuracy in % and its 95% interval: `50.0 [15.0, 85.0]`."""
    if interval is None or value is None:
        return pct(value)
    return f"{pct(value)} [{pct(interval[0])}, {pct(interval[1])}]"


def mean_std(table: dict, name: str) -> str:
    return f"{pct(table.get(name + '_mean'))} ± {pct(table.get(name + '_std'))}"


# a task metric's label and how it reads: EM and F1 in %, 1 - JS distance as a number in [0, 1]
METRIC_LABELS = {"em": "EM", "f1": "F1", "js_similarity": "1 - JS"}


def metric_value(name: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}" if name == "js_similarity" else pct(value)


def beats_vanilla(summary: dict) -> bool:
    best = summary.get("best_cell")
    return bool(best) and best["accuracy"] > summary["vanilla_accuracy"]


RUN_FIELDS = (("model", "model"), ("revision", "model_revision"), ("engine", "engine"), ("dtype", "dtype"),
              ("scoring", "scoring"), ("data root", "data_root"), ("modules", "modules"), ("cells", "cells"))


def run_fields(report: dict) -> list[tuple[str, str]]:
    """(label, value) of what the run was: from the run's manifest (`report["run"]`)."""
    run = report.get("run")
    if not run:
        return [("run settings", "not recorded (the run has no manifest.json)")]
    out = []
    for label, key in RUN_FIELDS:
        value = run.get(key)
        if key == "scoring" and value == "generate" and run.get("max_new_tokens") is not None:
            value = f"generate (greedy, {run['max_new_tokens']} new tokens)"
        elif key == "scoring" and value == "logprobs":
            value = "logprobs (option log-probs, no decoding)"
        elif isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        elif key == "data_root" and key in run and value is None:
            value = "the bundled sample splits"
        out.append((label, "not recorded" if value is None else str(value)))
    return out


def _micro(table: dict, correct: str, n: str):
    total = sum(g.get(n, 0) for g in table["by_lang"].values())
    return sum(g.get(correct, 0) for g in table["by_lang"].values()) / total if total else None


def _cell(best) -> str:
    return f"({best['source_layer']}, {best['target_layer']})" if best else "-"


def accuracy_table(table: dict, escape, delta) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a table's accuracies, per language then mean ± std and micro overall. A grouped task
    (questions of rows) shows each figure for its questions and, beside it, for its rows each scored alone.
    escape: text from data -> markup; delta(value) -> a signed difference's markup, or None for no such column.
    Columns: (header, per language summary -> text, the mean ± std row's text, the micro overall row's text)."""
    grouped = any("row_instances" in g for g in table["by_lang"].values())

    def ci(g, name):
        return (g.get("intervals") or {}).get(name)

    def best_of(g, prefix=""):
        best = g.get(prefix + "best_cell")
        return with_interval(best["accuracy"], ci(g, prefix + "best_cell")) if best else "-"

    q = " (questions)" if grouped else ""
    columns = [("questions" if grouped else "n", lambda g: str(g["instances"]), str(table["instances"]), "")]
    if grouped:
        columns.append(("rows", lambda g: str(g.get("row_instances", "-")),
                        str(sum(g.get("row_instances", 0) for g in table["by_lang"].values())), ""))
    columns.append((f"vanilla{q}", lambda g: with_interval(g["vanilla_accuracy"], ci(g, "vanilla")),
                    mean_std(table, "vanilla"), pct(table["vanilla_overall"])))
    if grouped:
        columns.append(("vanilla (rows)", lambda g: with_interval(g.get("row_vanilla_accuracy"), ci(g, "row_vanilla")),
                        "", pct(_micro(table, "row_vanilla_correct", "row_instances"))))
    columns.append((f"upper bound{q}", lambda g: with_interval(g.get("upper_bound"), ci(g, "upper_bound")),
                    mean_std(table, "upper_bound"), pct(table.get("upper_bound_overall"))))
    if grouped:
        columns.append(("upper bound (rows)",
                        lambda g: with_interval(g.get("row_upper_bound"), ci(g, "row_upper_bound")),
                        "", pct(_micro(table, "row_upper_bound_correct", "row_instances"))))
    columns.append((f"best cell{q}", best_of, mean_std(table, "best_cell"), ""))
    if grouped:
        columns.append(("best cell (rows)", lambda g: best_of(g, "row_"), "", ""))
    if delta:
        columns.append(("best - vanilla", lambda g: delta(g["best_cell"]["accuracy"] - g["vanilla_accuracy"])
                        if g.get("best_cell") else "-", "", ""))
    columns.append((f"best (i, j){q}", lambda g: _cell(g.get("best_cell")), "", ""))
    if grouped:
        columns.append(("best (i, j) (rows)", lambda g: _cell(g.get("row_best_cell")), "", ""))
    columns.append(("target-first i*", lambda g: str(g.get("target_first_choice", "-")), "", ""))
    header = ["lang"] + [c[0] for c in columns]
    rows = [[escape(lang)] + [c[1](table["by_lang"][lang]) for c in columns] for lang in table["languages"]]
    rows.append(["mean ± std"] + [c[2] for c in columns])
    rows.append(["overall (micro)"] + [c[3] for c in columns])
    return header, rows


def metric_table(table: dict, escape) -> tuple[list[str], list[list[str]]] | None:
    """(header, rows) of a table's task metrics per language (vanilla, best cell with its (i, j), upper
    bound), then mean ± std across languages; None where the task has none."""
    names = list(table.get("metrics") or {})
    if not names:
        return None
    header = ["lang"]
    for name in names:
        label = METRIC_LABELS.get(name, name)
        header += [f"{label} vanilla", f"{label} best cell", f"{label} best (i, j)", f"{label} upper bound"]
    rows = []
    for lang in table["languages"]:
        g = table["by_lang"][lang]
        row = [escape(lang)]
        for name in names:
            best = (g.get("best_cell_metrics") or {}).get(name)
            row += [metric_value(name, (g.get("vanilla_metrics") or {}).get(name)),
                    metric_value(name, best["value"]) if best else "-",
                    f"({best['source_layer']}, {best['target_layer']})" if best else "-",
                    metric_value(name, (g.get("upper_bound_metrics") or {}).get(name))]
        rows.append(row)
    row = ["mean ± std"]
    for name in names:
        spread = table["metrics"][name]
        for figure in ("vanilla", "best_cell", None, "upper_bound"):
            row.append("" if figure is None or f"{figure}_mean" not in spread else
                       f"{metric_value(name, spread[figure + '_mean'])} ± "
                       f"{metric_value(name, spread[figure + '_std'])}")
    rows.append(row)
    return header, rows


TABLE_NOTE = ("Accuracy in % with its 95% Wilson interval. Upper bound: an instance counts if any searched cell "
              "answers it (vanilla not included). Best cell: the (source i, target j) with the highest accuracy "
              "(ties: smallest).")
GROUPED_NOTE = (" A question counts only when all its rows are right (the benchmark's metric): every figure "
                "counts questions (the (questions) columns); beside each, the same figure over the rows, each "
                "row scored alone (the (rows) columns).")
METRIC_UNITS = {"em": "EM (exact match) in %", "f1": "F1 in %", "js_similarity": "1 - JS (1 - Jensen-Shannon "
                "distance of the option probabilities to the country's distribution) in [0, 1]"}


def metric_note(table: dict) -> str:
    units = ", ".join(METRIC_UNITS.get(name, name) for name in table.get("metrics") or {})
    return (f"Task metrics: {units}; each a mean over instances. Best cell: the (i, j) with the highest mean of "
            "that metric, chosen by the metric itself (so it may differ from the accuracy's). Upper bound: the "
            "instance's best cell, per instance the max of the metric over the searched cells (vanilla not "
            "included), averaged over instances.")


def count_line(table: dict) -> str:
    langs = f"{len(table['languages'])} language{'s' if len(table['languages']) != 1 else ''}"
    if any("row_instances" in g for g in table["by_lang"].values()):
        rows = sum(g.get("row_instances", 0) for g in table["by_lang"].values())
        return f"{table['instances']} questions ({rows} rows), {langs}."
    return f"{table['instances']} instances, {langs}."


def file_part(text: str) -> str:
    """`text` where it is a safe name; else a safe stand-in (unsafe characters to '_', plus a short hash
    so that two names never share a file)."""
    if is_name(text):
        return text
    import hashlib

    plain = re.sub(r"[^A-Za-z0-9._-]", "_", text).strip("._-")[:64] or "x"
    return f"{plain}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def figure_name(kind: str, key: str, lang: str) -> str:
    return f"{kind}/{file_part(key.replace('/', '-'))}-{file_part(lang)}.png"


def md(text) -> str:
    """Text from data, inert in Markdown: HTML escaped, and Markdown's own marks (table pipes, emphasis,
    links, code) backslash-escaped."""
    return re.sub(r"([\\`*_{}\[\]()#+!|$~])", r"\\\1", html.escape(str(text), quote=False))


# ---------------------------------------------------------------- figures

def png_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False  # '$' in a language or task name is text, not mathtext
    matplotlib.rcParams["text.usetex"] = False
    import matplotlib.pyplot as plt

    return plt


def heatmap_delta(key: str, lang: str, summary: dict) -> bytes:
    """Accuracy minus vanilla, points, [source layer][target layer]; the best cell boxed where it beats vanilla."""
    plt = pyplot()
    vanilla = summary["vanilla_accuracy"]
    grid = [[float("nan") if v is None else 100 * (v - vanilla) for v in row] for row in summary["heatmap"]]
    finite = [abs(v) for row in grid for v in row if not math.isnan(v)]
    span = max(max(finite, default=0.0), 1.0)  # at least +-1 point, so an all-zero grid is still white
    fig, ax = plt.subplots(figsize=(4.8, 4))
    image = ax.imshow(grid, origin="lower", cmap="RdBu", vmin=-span, vmax=span, interpolation="nearest")
    best = summary["best_cell"]
    if beats_vanilla(summary):
        ax.add_patch(plt.Rectangle((best["target_layer"] - 0.5, best["source_layer"] - 0.5), 1, 1, fill=False,
                                   edgecolor="black", linewidth=2))
        ax.annotate("best", (best["target_layer"], best["source_layer"]), color="black", fontsize=7,
                    ha="center", va="center")
        headline = f"best ({best['source_layer']}, {best['target_layer']}) {pct(best['accuracy'])}%"
    else:
        headline = f"no cell beats vanilla (best {pct(best['accuracy'])}%)"
    ticks = list(range(0, len(grid), max(1, len(grid) // 8)))
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xlabel("target layer j (recipient)")
    ax.set_ylabel("source layer i (donor)")
    ax.set_title(f"{key} {lang}: accuracy - vanilla (points)\nvanilla {pct(vanilla)}%, {headline}", fontsize=8)
    fig.colorbar(image, ax=ax, label="points vs vanilla")
    data = png_bytes(fig)
    plt.close(fig)
    return data


def marginals_plot(key: str, lang: str, summary: dict) -> bytes:
    """Union accuracy per source layer and per target layer, vanilla as a dashed line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    for name, label in (("per_source_layer", "per source layer i (union over j)"),
                        ("per_target_layer", "per target layer j (union over i)")):
        points = sorted(summary[name].items(), key=lambda kv: int(kv[0]))
        ax.plot([int(k) for k, _ in points], [100 * v for _, v in points], marker="o", markersize=3, label=label)
    ax.axhline(100 * summary["vanilla_accuracy"], color="grey", linestyle="--", label="vanilla")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers are whole numbers
    ax.set_xlabel("layer")
    ax.set_ylabel("accuracy %")
    ax.set_ylim(0, 102)  # accuracy axes start at 0
    ax.set_title(f"{key} {lang}: marginals", fontsize=8)
    ax.legend(fontsize=6)
    data = png_bytes(fig)
    plt.close(fig)
    return data


OVERVIEW_BARS = (("vanilla", "vanilla"), ("best_cell", "best cell"), ("upper_bound", "upper bound"))


def _accuracy_of(summary: dict, figure: str) -> float:
    value = summary["best_cell"]["accuracy"] if figure == "best_cell" and "best_cell" in summary else \
        summary.get("vanilla_accuracy" if figure == "vanilla" else figure)
    return float("nan") if value is None else 100 * value


def overview_plot(report: dict) -> bytes:
    """Per table and language: vanilla, best cell and upper bound, each with its 95% Wilson interval."""
    plt = pyplot()
    keys = list(report["tables"])
    fig, axes = plt.subplots(len(keys), 1, figsize=(8, 2.8 * len(keys)), squeeze=False)
    width = 0.8 / len(OVERVIEW_BARS)
    for ax, key in zip(axes[:, 0], keys):
        table = report["tables"][key]
        langs = table["languages"]
        highest = 0.0
        for k, (figure, label) in enumerate(OVERVIEW_BARS):
            xs = [x + (k - 1) * width for x in range(len(langs))]
            values = [_accuracy_of(table["by_lang"][lang], figure) for lang in langs]
            spans = [(table["by_lang"][lang].get("intervals") or {}).get(figure) for lang in langs]
            # (rounding puts a bound a hair past its value where the value is 0 or 100)
            low = [max(0.0, v - 100 * c[0]) if c and not math.isnan(v) else 0.0 for v, c in zip(values, spans)]
            high = [max(0.0, 100 * c[1] - v) if c and not math.isnan(v) else 0.0 for v, c in zip(values, spans)]
            ax.bar(xs, values, width, label=label, yerr=[low, high], capsize=2, error_kw={"elinewidth": 0.8})
            highest = max([highest] + [v + h for v, h in zip(values, high) if not math.isnan(v)])
        ax.set_xticks(list(range(len(langs))), langs)
        ax.set_ylim(0, min(105.0, max(highest * 1.1, 5.0)))  # from 0; an all-zero run still has an axis
        ax.set_ylabel("accuracy %")
        ax.set_title(f"{key} (bars: 95% Wilson intervals)", fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, never over them
    fig.tight_layout()
    data = png_bytes(fig)
    plt.close(fig)
    return data


def render_figures(report: dict) -> dict[str, bytes]:
    """Figure name (path under report/) -> PNG bytes."""
    figures = {}
    for key, table in report["tables"].items():
        for lang, summary in table["by_lang"].items():
            if "heatmap" in summary and single_cell(summary) is None:  # one cell: nothing to map
                figures[figure_name("heatmaps", key, lang)] = heatmap_delta(key, lang, summary)
                figures[figure_name("marginals", key, lang)] = marginals_plot(key, lang, summary)
    if report["tables"]:
        figures["overview.png"] = overview_plot(report)
    return figures


# ---------------------------------------------------------------- Markdown

def md_table(header: list[str], rows: list[list[str]], summary_rows: int = 0) -> list[str]:
    """A Markdown table; the last `summary_rows` rows' first cell in bold."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for k, row in enumerate(rows):
        first = f"**{row[0]}**" if k >= len(rows) - summary_rows else row[0]
        out.append("| " + " | ".join([first] + row[1:]) + " |")
    return out


def render_markdown(report: dict) -> str:
    lines = [f"# xtp-ray report: run {md(report['run_id'])}", ""]
    lines += [" · ".join(f"{label}: {md(value)}" for label, value in run_fields(report)), ""]
    for key, table in report["tables"].items():
        grouped = any("row_instances" in g for g in table["by_lang"].values())
        header, rows = accuracy_table(table, md, None)
        lines += [f"## {md(key)}", "", f"{count_line(table)} {TABLE_NOTE}{GROUPED_NOTE if grouped else ''}", ""]
        note = leftout.table_note(report, key)  # rows or languages this table lost, from errors.jsonl
        lines += [f"**{md(note)}**", ""] if note else []
        lines += md_table(header, rows, summary_rows=2) + [""]
        metrics = metric_table(table, md)
        if metrics:
            lines += [metric_note(table), ""] + md_table(*metrics, summary_rows=1) + [""]
    if report.get("offline_scaling"):
        lines += ["## Offline scaling (the paper's coarse settings on ID and OOD data)", "",
                  "Accuracy in %, vanilla -> transplanted under the fixed setting, mean ± std across languages.", "",
                  "| task type | granularity | (source, target) | ID data | ID vanilla | ID transplanted | OOD data | "
                  "OOD vanilla | OOD transplanted |", "|---|---|---|---|---|---|---|---|---|"]
        for row in report["offline_scaling"]:
            sides = []
            for side in ("ID", "OOD"):
                e = row.get(side)
                sides += ([f"{md(e['task'])} ({md(e['split'])}, {md(leftout.languages_text(report, e))})",
                           f"{pct(e['vanilla_mean'])} ± {pct(e['vanilla_std'])}",
                           f"{pct(e['transplanted_mean'])} ± {pct(e['transplanted_std'])}"] if e else ["-", "-", "-"])
            lines.append(f"| {row['task_type']} | {row['granularity']} | {row['setting']} | "
                         + " | ".join(sides) + " |")
        lines.append("")
        for row in report["offline_scaling"]:
            for side in ("ID", "OOD"):
                e = row.get(side)
                if e:
                    shown = ", ".join(f"{md(lang)} {pct(v['vanilla'])} -> {pct(v['transplanted'])}"
                                      for lang, v in e["by_lang"].items())
                    lines.append(f"{row['task_type']} {side} ({md(e['task'])}) per language: {shown}")
        lines.append("")
    if report["target_first"]:
        lines += ["## Target-first selection (sample -> unseen)", "",
                  "| task | module | lang | (i*, 0) | unseen vanilla | unseen applied |", "|---|---|---|---|---|---|"]
        for e in report["target_first"]:
            lines.append(f"| {md(e['task'])} | {md(e['module'])} | {md(e['lang'])} | ({e['source_layer']}, 0) | "
                         f"{pct(e.get('unseen_vanilla'))} | {pct(e.get('unseen_applied'))} |")
        lines.append("")
    if report.get("compared_with"):
        lines += [f"## Compared with run {md(report['compared_with'])}", "",
                  "| table | lang | vanilla Δ | upper bound Δ |", "|---|---|---|---|"]
        for d in report["deltas"]:
            lines.append(f"| {md(d['table'])} | {md(d['lang'])} | {pct(d['vanilla_delta'])} | "
                         f"{pct(d.get('upper_bound_delta'))} |")
        lines.append("")
    lines += leftout.render_markdown(report, md)
    lines += ["## Figures", "", "Also as one page with every figure embedded: `report.html`.", ""]
    lines += [f"- {md(name)}" for name in report["figures"]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- HTML

def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def html_figure(png: bytes, caption: str) -> str:
    return (f'<figure><img src="{data_uri(png)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def html_page(title: str, sections: list[str]) -> str:
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{PAGE_STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{''.join(sections)}</body></html>\n")


def _delta_cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    css = "pos" if value > 0 else "neg" if value < 0 else ""
    return f'<span class="{css}">{signed_pct(value)}</span>'


def offline_scaling_html(scaling: list[dict], report: dict) -> str:
    """The paper's shape: one row per task type, ID and OOD side by side (mean ± std across languages);
    the per-language figures in a table under it, folded. A side whose languages shrank says so."""
    rows, per_lang = [], []
    for row in scaling:
        cells = [html.escape(row["task_type"]), html.escape(row["granularity"]), html.escape(row["setting"])]
        for side in ("ID", "OOD"):
            e = row.get(side)
            if not e:
                cells += ["-", "-", "-"]
                continue
            cells += [f"{html.escape(e['task'])}<br><small>{html.escape(e['split'])}, "
                      f"{html.escape(leftout.languages_text(report, e))}</small>",
                      f"{pct(e['vanilla_mean'])} ± {pct(e['vanilla_std'])}",
                      f"{pct(e['transplanted_mean'])} ± {pct(e['transplanted_std'])} "
                      f"({_delta_cell(e['transplanted_mean'] - e['vanilla_mean'])})"]
            for lang, v in e["by_lang"].items():
                per_lang.append([html.escape(row["task_type"]), side, html.escape(e["task"]), html.escape(lang),
                                 str(v["instances"]), pct(v["vanilla"]), pct(v["transplanted"]),
                                 _delta_cell(v["transplanted"] - v["vanilla"])])
        rows.append(cells)
    header = ["task type", "granularity", "(source, target)"]
    for side in ("ID", "OOD"):
        header += [f"{side} data", f"{side} vanilla", f"{side} transplanted (Δ)"]
    return ("<h2>Offline scaling (the paper's coarse settings on ID and OOD data)</h2><p>Accuracy in %, mean ± std "
            "across languages: vanilla and transplanted under the fixed setting (Δ: transplanted minus "
            "vanilla, points).</p>" + html_table(header, rows)
            + f"<details><summary>Per language ({len(per_lang)} rows)</summary>"
            + html_table(["task type", "data", "task", "lang", "n", "vanilla", "transplanted",
                          "transplanted - vanilla"], per_lang) + "</details>")


def render_html(report: dict, figures: dict[str, bytes]) -> str:
    """One self-contained page: tables, target-first selection, comparisons, every figure inline."""
    sections = ["<p>" + " &middot; ".join(f"<b>{html.escape(label)}</b>: {html.escape(value)}"
                                          for label, value in run_fields(report)) + "</p>"]
    if "overview.png" in figures:
        sections.append(html_figure(figures["overview.png"], "vanilla, best cell and upper bound per language, "
                                                             "with 95% Wilson intervals"))
    for key, table in report["tables"].items():
        grouped = any("row_instances" in g for g in table["by_lang"].values())
        header, rows = accuracy_table(table, html.escape, _delta_cell)
        metrics = metric_table(table, html.escape)
        figs = []
        for lang in table["languages"]:
            for kind, caption in (("heatmaps", "accuracy - vanilla"), ("marginals", "marginals")):
                name = figure_name(kind, key, lang)
                if name in figures:
                    figs.append(html_figure(figures[name], f"{key} {lang}: {caption}"))
        sections.append(
            f"<h2>{html.escape(key)}</h2><p>{html.escape(count_line(table))} {html.escape(TABLE_NOTE)}"
            f"{html.escape(GROUPED_NOTE) if grouped else ''}</p>"
            + (f"<p><strong>{html.escape(note)}</strong></p>" if (note := leftout.table_note(report, key)) else "")
            + html_table(header, rows, summary_rows=2)
            + (f"<p>{html.escape(metric_note(table))}</p>" + html_table(*metrics, summary_rows=1) if metrics else "")
            + f"<div class=\"figures\">{''.join(figs)}</div>")
    if report.get("offline_scaling"):
        sections.append(offline_scaling_html(report["offline_scaling"], report))
    if report["target_first"]:
        rows = [[html.escape(e["task"]), html.escape(e["module"]), html.escape(e["lang"]),
                 f"({e['source_layer']}, 0)", str(e.get("unseen_instances", "-")), pct(e.get("unseen_vanilla")),
                 pct(e.get("unseen_applied")),
                 _delta_cell(e["unseen_applied"] - e["unseen_vanilla"]) if "unseen_applied" in e else "-"]
                for e in report["target_first"]]
        sections.append("<h2>Target-first selection (sample &rarr; unseen)</h2><p>i* = argmax over i of correct "
                        "answers at j = 0 on the sample split (ties: larger i), applied to the unseen split.</p>"
                        + html_table(["task", "module", "lang", "(i*, 0)", "unseen n", "unseen vanilla",
                                      "unseen applied", "applied - vanilla"], rows))
    sections.append(leftout.render_html(report))
    if report.get("compared_with"):
        rows = [[html.escape(d["table"]), html.escape(d["lang"]), _delta_cell(d["vanilla_delta"]),
                 _delta_cell(d.get("upper_bound_delta"))] for d in report["deltas"]]
        sections.append(f"<h2>Compared with run {html.escape(report['compared_with'])}</h2>"
                        + html_table(["table", "lang", "vanilla Δ", "upper bound Δ"], rows))
    return html_page(f"xtp-ray report: run {report['run_id']}", sections)

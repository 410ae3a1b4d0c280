"""A run's report as people read it: Markdown, one self-contained HTML page, PNG figures.

Figures (matplotlib, Agg): per (table, language) a heatmap of accuracy minus vanilla
over [source layer i][target layer j], on a diverging colour map centred at 0 with
the best cell marked, and the per-source / per-target marginals as line plots; one
overview bar chart. `report.html` embeds every figure as a data: URI and uses no
script, font or stylesheet from elsewhere, so it reads straight from object storage.
"""
from __future__ import annotations

import base64
import html
import io
import math
import re

from ..names import is_name
from . import leftout
from .scaling import single_cell

PAGE_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:0.6em 0 1.4em}
th,td{border:1px solid #ccc;padding:3px 9px;text-align:right}
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
    """Accuracy minus vanilla, points, [source layer][target layer]; the best cell boxed."""
    plt = pyplot()
    vanilla = summary["vanilla_accuracy"]
    grid = [[float("nan") if v is None else 100 * (v - vanilla) for v in row] for row in summary["heatmap"]]
    finite = [abs(v) for row in grid for v in row if not math.isnan(v)]
    span = max(max(finite, default=0.0), 1.0)  # at least +-1 point, so an all-zero grid is still white
    fig, ax = plt.subplots(figsize=(4.8, 4))
    image = ax.imshow(grid, origin="lower", cmap="RdBu", vmin=-span, vmax=span, interpolation="nearest")
    best = summary["best_cell"]
    ax.add_patch(plt.Rectangle((best["target_layer"] - 0.5, best["source_layer"] - 0.5), 1, 1, fill=False,
                               edgecolor="black", linewidth=2))
    ax.annotate("best", (best["target_layer"], best["source_layer"]), color="black", fontsize=7,
                ha="center", va="center")
    ticks = list(range(0, len(grid), max(1, len(grid) // 8)))
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xlabel("target layer j (recipient)")
    ax.set_ylabel("source layer i (donor)")
    ax.set_title(f"{key} {lang}: accuracy - vanilla (points)\nvanilla {pct(vanilla)}%, best "
                 f"({best['source_layer']}, {best['target_layer']}) {pct(best['accuracy'])}%", fontsize=8)
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
    ax.set_ylim(-2, 102)
    ax.set_title(f"{key} {lang}: marginals", fontsize=8)
    ax.legend(fontsize=6)
    data = png_bytes(fig)
    plt.close(fig)
    return data


def overview_plot(report: dict) -> bytes:
    plt = pyplot()
    keys = list(report["tables"])
    fig, axes = plt.subplots(len(keys), 1, figsize=(8, 2.8 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        table = report["tables"][key]
        langs = table["languages"]
        xs = range(len(langs))
        ax.bar([x - 0.2 for x in xs], [100 * table["by_lang"][lang]["vanilla_accuracy"] for lang in langs], 0.4,
               label="vanilla")
        ax.bar([x + 0.2 for x in xs], [100 * table["by_lang"][lang].get("upper_bound", float("nan"))
                                       for lang in langs], 0.4, label="upper bound")
        ax.set_xticks(list(xs), langs)
        ax.set_ylabel("accuracy %")
        ax.set_title(key)
        ax.legend(fontsize=7)
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

def render_markdown(report: dict) -> str:
    lines = [f"# xtp-ray report: run {md(report['run_id'])}", ""]
    for key, table in report["tables"].items():
        lines += [f"## {md(key)}", "",
                  f"{table['instances']} instances, {len(table['languages'])} languages. Accuracy in %; "
                  "upper bound = any searched cell correct.", "",
                  *([f"**{md(leftout.table_note(report, key))}**", ""] if leftout.table_note(report, key) else []),
                  "| lang | n | vanilla | upper bound | best cell | best (i, j) | target-first i* |",
                  "|---|---|---|---|---|---|---|"]
        for lang in table["languages"]:
            g = table["by_lang"][lang]
            best = g.get("best_cell")
            lines.append(f"| {md(lang)} | {g['instances']} | {pct(g['vanilla_accuracy'])} | {pct(g.get('upper_bound'))} "
                         f"| {pct(best['accuracy']) if best else '-'} | "
                         f"{(best['source_layer'], best['target_layer']) if best else '-'} | "
                         f"{g.get('target_first_choice', '-')} |")
        lines.append(f"| **mean ± std** | {table['instances']} | {pct(table['vanilla_mean'])} ± "
                     f"{pct(table['vanilla_std'])} | {pct(table.get('upper_bound_mean'))} ± "
                     f"{pct(table.get('upper_bound_std'))} | {pct(table.get('best_cell_mean'))} ± "
                     f"{pct(table.get('best_cell_std'))} | | |")
        lines.append(f"| **overall (micro)** | | {pct(table['vanilla_overall'])} | "
                     f"{pct(table.get('upper_bound_overall'))} | | | |")
        lines.append("")
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
            lines.append(f"| {md(d['table'])} | {md(d['lang'])} | {pct(d['vanilla_delta'])} | {pct(d.get('upper_bound_delta'))} |")
        lines.append("")
    lines += leftout.render_markdown(report, md)
    lines += ["## Figures", "", "Also as one page with every figure embedded: `report.html`.", ""]
    lines += [f"- {md(name)}" for name in report["figures"]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- HTML

def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def html_table(header: list[str], rows: list[list[str]], summary_rows: int = 0) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for k, row in enumerate(rows):
        css = ' class="summary"' if k >= len(rows) - summary_rows else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


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


def render_html(report: dict, figures: dict[str, bytes]) -> str:
    """One self-contained page: tables, target-first selection, comparisons, every figure inline."""
    sections = []
    if "overview.png" in figures:
        sections.append(html_figure(figures["overview.png"], "vanilla and upper bound per language"))
    for key, table in report["tables"].items():
        rows = []
        for lang in table["languages"]:
            g = table["by_lang"][lang]
            best = g.get("best_cell")
            rows.append([html.escape(lang), str(g["instances"]), pct(g["vanilla_accuracy"]), pct(g.get("upper_bound")),
                         pct(best["accuracy"]) if best else "-",
                         _delta_cell(best["accuracy"] - g["vanilla_accuracy"]) if best else "-",
                         f"({best['source_layer']}, {best['target_layer']})" if best else "-",
                         str(g.get("target_first_choice", "-"))])
        rows.append(["mean ± std", str(table["instances"]),
                     f"{pct(table['vanilla_mean'])} ± {pct(table['vanilla_std'])}",
                     f"{pct(table.get('upper_bound_mean'))} ± {pct(table.get('upper_bound_std'))}",
                     f"{pct(table.get('best_cell_mean'))} ± {pct(table.get('best_cell_std'))}", "", "", ""])
        rows.append(["overall (micro)", "", pct(table["vanilla_overall"]), pct(table.get("upper_bound_overall")),
                     "", "", "", ""])
        figs = []
        for lang in table["languages"]:
            for kind, caption in (("heatmaps", "accuracy - vanilla"), ("marginals", "marginals")):
                name = figure_name(kind, key, lang)
                if name in figures:
                    figs.append(html_figure(figures[name], f"{key} {lang}: {caption}"))
        sections.append(
            f"<h2>{html.escape(key)}</h2><p>{table['instances']} instances, {len(table['languages'])} languages. "
            "Accuracy in %; upper bound = an instance counts if any searched cell answers it.</p>"
            + (f"<p><strong>{html.escape(leftout.table_note(report, key))}</strong></p>"
               if leftout.table_note(report, key) else "")
            + html_table(["lang", "n", "vanilla", "upper bound", "best cell", "best - vanilla", "best (i, j)",
                          "target-first i*"], rows, summary_rows=2)
            + f"<div class=\"figures\">{''.join(figs)}</div>")
    if report.get("offline_scaling"):
        rows = []
        for row in report["offline_scaling"]:
            for side in ("ID", "OOD"):
                e = row.get(side)
                if not e:
                    continue
                for lang, v in e["by_lang"].items():
                    rows.append([row["task_type"], row["granularity"], row["setting"], side,
                                 html.escape(f"{e['task']} ({e['split']})"), html.escape(lang), pct(v["vanilla"]),
                                 pct(v["transplanted"]), _delta_cell(v["transplanted"] - v["vanilla"])])
                rows.append([row["task_type"], row["granularity"], row["setting"], side,
                             html.escape(f"{e['task']} ({e['split']}, {leftout.languages_text(report, e)})"),
                             "mean ± std",
                             f"{pct(e['vanilla_mean'])} ± {pct(e['vanilla_std'])}",
                             f"{pct(e['transplanted_mean'])} ± {pct(e['transplanted_std'])}",
                             _delta_cell(e["transplanted_mean"] - e["vanilla_mean"])])
        sections.append("<h2>Offline scaling (the paper's coarse settings on ID and OOD data)</h2>"
                        + html_table(["task type", "granularity", "(source, target)", "data", "task", "lang",
                                      "vanilla", "transplanted", "transplanted - vanilla"], rows))
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

"""Trends across runs (nights): `xtp history`.

Reads every run's `report/report.json` under an output location (a run without a
report is aggregated on the fly, without writing), orders the runs by the start of
their first attempt, and writes `<output>/history/`: `history.json`, `history.png`
(one panel per table and metric, a line per language) and `history.html` (the
figure embedded, the newest run against the previous one). A drop of the newest run
below the previous one by more than a threshold, in points, on any (table, language,
metric) is a regression; the CLI exits with code 3 on one, so a cron job can alert.
"""
from __future__ import annotations

import html
import json
import logging
import math

from . import storage
from .aggregation import aggregate_frame, read_candidates, run_started
from .report import data_uri, html_page, html_table, pct, signed_pct

log = logging.getLogger("xtp_ray")
METRICS = ("vanilla", "upper_bound", "target_first")
METRIC_TITLES = {"vanilla": "vanilla", "upper_bound": "upper bound", "target_first": "target-first applied (unseen)"}
REGRESSION_EXIT = 3


def load_report(output: str, run_id: str) -> dict | None:
    run_uri = storage.join(output, run_id)
    report_uri = storage.join(run_uri, "report", "report.json")
    if storage.exists(report_uri):
        report = json.loads(storage.read_text(report_uri))
        report.setdefault("started", run_started(run_uri))
        return report
    if storage.is_dir(storage.join(run_uri, "candidates")):
        log.info("run %s has no report: aggregating it in memory", run_id)
        return {"run_id": run_id, "started": run_started(run_uri), **aggregate_frame(read_candidates(run_uri))}
    return None


def values_of(report: dict) -> dict[tuple[str, str, str], float]:
    """(table, lang, metric) -> accuracy, for one run."""
    out = {}
    for key, table in report["tables"].items():
        for lang, g in table["by_lang"].items():
            out[(key, lang, "vanilla")] = g["vanilla_accuracy"]
            if "upper_bound" in g:
                out[(key, lang, "upper_bound")] = g["upper_bound"]
    for entry in report.get("target_first", []):
        if "unseen_applied" in entry:
            out[(f"{entry['task']}/unseen/{entry['module']}", entry["lang"], "target_first")] = entry["unseen_applied"]
    return out


def collect(output: str, run_ids: list[str] | None = None) -> list[dict]:
    """Reports of the named runs (in that order), or of every run under output by start time."""
    if run_ids:
        reports = []
        for run_id in run_ids:
            report = load_report(output, run_id)
            if report is None:
                raise ValueError(f"run {run_id!r} under {output} has neither a report nor candidates")
            reports.append(report)
        return reports
    reports = [r for name in storage.list_names(output) if name != "history"
               for r in [load_report(output, name)] if r is not None]
    if not reports:
        raise ValueError(f"no runs with candidates under {output}")
    return sorted(reports, key=lambda r: (r.get("started") is None, r.get("started") or 0, r["run_id"]))


def build_history(reports: list[dict], threshold_points: float) -> dict:
    runs = [{"run_id": r["run_id"], "started": r.get("started")} for r in reports]
    per_run = [values_of(r) for r in reports]
    keys = sorted({k for values in per_run for k in values})
    series = [{"table": t, "lang": lang, "metric": m, "values": [values.get((t, lang, m)) for values in per_run]}
              for t, lang, m in keys]
    regressions = []
    if len(reports) >= 2:
        newest, previous = per_run[-1], per_run[-2]
        for key in keys:
            if key in newest and key in previous:
                drop = 100 * (previous[key] - newest[key])
                if drop > threshold_points:
                    regressions.append({"table": key[0], "lang": key[1], "metric": key[2], "previous": previous[key],
                                        "newest": newest[key], "drop_points": drop})
    return {"runs": runs, "series": series, "threshold_points": threshold_points, "regressions": regressions}


def plot_history(history: dict) -> bytes:
    from .report import png_bytes, pyplot

    plt = pyplot()
    tables = sorted({s["table"] for s in history["series"]})
    fig, axes = plt.subplots(max(1, len(tables)), len(METRICS), figsize=(4.2 * len(METRICS), 2.8 * max(1, len(tables))),
                             squeeze=False)
    labels = [r["run_id"] for r in history["runs"]]
    xs = list(range(len(labels)))
    for row, table in enumerate(tables):
        for col, metric in enumerate(METRICS):
            ax = axes[row][col]
            for s in history["series"]:
                if s["table"] == table and s["metric"] == metric:
                    ys = [float("nan") if v is None else 100 * v for v in s["values"]]
                    ax.plot(xs, ys, marker="o", markersize=3, label=s["lang"])
            ax.set_title(f"{table}: {METRIC_TITLES[metric]}", fontsize=8)
            ax.set_xticks(xs, labels, rotation=30, ha="right", fontsize=6)
            ax.set_ylim(-2, 102)
            ax.set_ylabel("accuracy %", fontsize=7)
            if ax.lines:
                ax.legend(fontsize=6)
    fig.tight_layout()
    data = png_bytes(fig)
    plt.close(fig)
    return data


def render_history_html(history: dict, png: bytes) -> str:
    runs = history["runs"]
    sections = [f"<p>{len(runs)} runs, oldest first: {html.escape(', '.join(r['run_id'] for r in runs))}.</p>",
                f'<figure><img src="{data_uri(png)}" alt="accuracy across runs"><figcaption>accuracy across runs'
                "</figcaption></figure>"]
    if len(runs) >= 2:
        regressed = {(r["table"], r["lang"], r["metric"]) for r in history["regressions"]}
        rows = []
        for s in history["series"]:
            new, old = s["values"][-1], s["values"][-2]
            if new is None or old is None:
                continue
            flag = "REGRESSION" if (s["table"], s["lang"], s["metric"]) in regressed else ""
            rows.append([html.escape(s["table"]), html.escape(s["lang"]), METRIC_TITLES[s["metric"]], pct(old),
                         pct(new), signed_pct(new - old), f'<span class="neg">{flag}</span>' if flag else ""])
        verdict = (f"{len(history['regressions'])} regression(s) beyond {history['threshold_points']:g} points"
                   if history["regressions"] else f"no drop beyond {history['threshold_points']:g} points")
        sections.append(f"<h2>{html.escape(runs[-1]['run_id'])} against {html.escape(runs[-2]['run_id'])}: "
                        f"{verdict}</h2>"
                        + html_table(["table", "lang", "metric", "previous", "newest", "change", ""], rows))
    return html_page("xtp-ray history", sections)


def write_history(output: str, run_ids: list[str] | None = None, threshold_points: float = 2.0) -> dict:
    """Write <output>/history/{history.json,history.png,history.html}; returns the history."""
    if math.isnan(threshold_points) or threshold_points < 0:
        raise ValueError(f"threshold must be a non-negative number of points, got {threshold_points}")
    history = build_history(collect(output, run_ids), threshold_points)
    png = plot_history(history)
    directory = storage.join(output, "history")
    storage.write_text(storage.join(directory, "history.json"), json.dumps(history, indent=1))
    storage.write_bytes(storage.join(directory, "history.png"), png)
    storage.write_text(storage.join(directory, "history.html"), render_history_html(history, png))
    history["uri"] = storage.join(directory, "history.html")
    return history

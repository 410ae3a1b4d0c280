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

from .. import storage
from ..names import is_name
from .aggregation import aggregate_merged, collect_partials, run_started, run_uri_of
from .paired import compare_paired, decode, holm, wilson
from .report import data_uri, html_page, html_table, pct, signed_pct

log = logging.getLogger("xtp_ray")
METRICS = ("vanilla", "upper_bound", "target_first")
METRIC_TITLES = {"vanilla": "vanilla", "upper_bound": "upper bound", "target_first": "target-first applied (unseen)"}
REGRESSION_EXIT = 3


def load_report(output: str, run_id: str) -> dict | None:
    run_uri = run_uri_of(output, run_id)
    report_uri = storage.join(run_uri, "report", "report.json")
    if storage.exists(report_uri):
        report = json.loads(storage.read_text(report_uri))
        report.setdefault("started", run_started(run_uri))
        return report
    if storage.is_dir(storage.join(run_uri, "candidates")):
        log.info("run %s has no report: aggregating it in memory", run_id)
        return {"run_id": run_id, "started": run_started(run_uri), **aggregate_merged(collect_partials(run_uri)[0])}
    return None


def measures_of(report: dict) -> dict[tuple[str, str, str], tuple[float, int | None, dict | None]]:
    """(table, lang, metric) -> (accuracy, instances, per-instance outcomes or None (older reports))."""
    out = {}
    for key, table in report["tables"].items():
        for lang, g in table["by_lang"].items():
            outcomes = g.get("outcomes", {})
            out[(key, lang, "vanilla")] = (g["vanilla_accuracy"], g.get("instances"), outcomes.get("vanilla"))
            if "upper_bound" in g:
                out[(key, lang, "upper_bound")] = (g["upper_bound"], g.get("instances"), outcomes.get("upper_bound"))
    for entry in report.get("target_first", []):
        if "unseen_applied" in entry:
            out[(f"{entry['task']}/unseen/{entry['module']}", entry["lang"], "target_first")] = (
                entry["unseen_applied"], entry.get("unseen_instances"), entry.get("outcomes"))
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
    runs = []
    for name in storage.list_names(output):
        if is_name(name):
            runs.append(name)
        else:  # never a run id of ours: reading it could leave the output
            log.warning("history: skipped %r under %s: not a run id (letters, digits, '.', '_', '-')", name, output)
    reports = [r for name in runs if name != "history" for r in [load_report(output, name)] if r is not None]
    if not reports:
        raise ValueError(f"no runs with candidates under {output}")
    return sorted(reports, key=lambda r: (r.get("started") is None, r.get("started") or 0, r["run_id"]))


def build_history(reports: list[dict], threshold_points: float, alpha: float = 0.05) -> dict:
    """Series per (table, lang, metric) with Wilson 95% intervals, and the newest run against the
    previous one: on the instances both scored, McNemar's exact test per (table, lang, metric), Holm
    across them. A regression is a drop of more than `threshold_points` that is also significant at
    `alpha` after Holm; a pair without per-instance outcomes (an older report) is judged on the drop alone."""
    runs = [{"run_id": r["run_id"], "started": r.get("started")} for r in reports]
    per_run = [measures_of(r) for r in reports]
    keys = sorted({k for measures in per_run for k in measures})
    series = []
    for t, lang, m in keys:
        values, intervals = [], []
        for measures in per_run:
            value, n, _ = measures.get((t, lang, m), (None, None, None))
            values.append(value)
            intervals.append(list(wilson(round(value * n), n)) if value is not None and n else None)
        series.append({"table": t, "lang": lang, "metric": m, "values": values, "intervals": intervals})
    comparisons = []
    if len(reports) >= 2:
        newest, previous = per_run[-1], per_run[-2]
        for key in keys:
            if key not in newest or key not in previous:
                continue
            entry = {"table": key[0], "lang": key[1], "metric": key[2]}
            if newest[key][2] and previous[key][2]:
                entry.update(compare_paired(decode(previous[key][2]), decode(newest[key][2])))
                entry["test"] = "McNemar exact, Holm"
                if entry["only_previous"] or entry["only_newest"]:
                    entry["note"] = (f"compared on the {entry['instances']} instances both runs scored "
                                     f"({entry['only_previous']} only in the previous, {entry['only_newest']} only "
                                     "in the newest)")
            else:
                entry.update(previous=previous[key][0], newest=newest[key][0], p_value=None,
                             test="threshold only (a report without per-instance outcomes)")
            entry["drop_points"] = 100 * (entry["previous"] - entry["newest"])
            comparisons.append(entry)
        tested = [c for c in comparisons if c["p_value"] is not None]
        for c, adjusted in zip(tested, holm([c["p_value"] for c in tested])):
            c["p_holm"] = adjusted
    regressions = [c for c in comparisons if c["drop_points"] > threshold_points
                   and (c["p_value"] is None or c["p_holm"] < alpha)]
    return {"runs": runs, "series": series, "threshold_points": threshold_points, "alpha": alpha,
            "comparisons": comparisons, "regressions": regressions}


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
                    line, = ax.plot(xs, ys, marker="o", markersize=3, label=s["lang"])
                    bands = [(x, 100 * b[0], 100 * b[1]) for x, b in zip(xs, s.get("intervals") or []) if b]
                    if bands:  # Wilson 95% intervals: how far a run may move by chance alone
                        ax.fill_between([b[0] for b in bands], [b[1] for b in bands], [b[2] for b in bands],
                                        color=line.get_color(), alpha=0.15, linewidth=0)
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
        for c in history["comparisons"]:
            flag = "REGRESSION" if (c["table"], c["lang"], c["metric"]) in regressed else ""
            tested = c["p_value"] is not None
            rows.append([html.escape(c["table"]), html.escape(c["lang"]), METRIC_TITLES[c["metric"]],
                         pct(c["previous"]), pct(c["newest"]), signed_pct(c["newest"] - c["previous"]),
                         str(c["instances"]) if tested else "", f"{c['lost']} / {c['gained']}" if tested else "",
                         f"{c['p_holm']:.3g}" if tested else "not tested",
                         html.escape(c.get("note", "")), f'<span class="neg">{flag}</span>' if flag else ""])
        verdict = (f"{len(history['regressions'])} regression(s)" if history["regressions"] else "no regression")
        sections.append(f"<h2>{html.escape(runs[-1]['run_id'])} against {html.escape(runs[-2]['run_id'])}: "
                        f"{verdict}</h2><p>A regression: a drop of more than {history['threshold_points']:g} points "
                        f"that McNemar's exact test on the instances both runs scored finds significant at "
                        f"{history['alpha']:g} after Holm's correction across the rows. Bands on the figure: "
                        "Wilson 95% intervals.</p>"
                        + html_table(["table", "lang", "metric", "previous", "newest", "change", "paired instances",
                                      "lost / gained", "p (Holm)", "note", ""], rows))
    return html_page("xtp-ray history", sections)


def write_history(output: str, run_ids: list[str] | None = None, threshold_points: float = 2.0,
                  alpha: float = 0.05) -> dict:
    """Write <output>/history/{history.json,history.png,history.html}; returns the history."""
    if math.isnan(threshold_points) or threshold_points < 0:
        raise ValueError(f"--threshold must be a non-negative number of points, got {threshold_points}")
    if not 0 < alpha < 1:
        raise ValueError(f"--alpha must lie between 0 and 1, got {alpha}")
    history = build_history(collect(output, run_ids), threshold_points, alpha)
    png = plot_history(history)
    directory = storage.join(output, "history")
    storage.write_text(storage.join(directory, "history.json"), json.dumps(history, indent=1))
    storage.write_bytes(storage.join(directory, "history.png"), png)
    storage.write_text(storage.join(directory, "history.html"), render_history_html(history, png))
    history["uri"] = storage.join(directory, "history.html")
    return history

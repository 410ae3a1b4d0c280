"""Aggregates on hand-made candidate rows, checked against values worked out by hand."""
import pandas as pd
import pytest

from xtp_ray.results.aggregation import compare
from xtp_ray.results.report import render_figures, render_html, render_markdown
from xtp_ray.results.rows import aggregate_frame


def _rows(task, split, lang, instance, vanilla, grid):
    """grid: {(i, j): correct} for one instance."""
    base = {"task": task, "split": split, "lang": lang, "instance_id": f"{task}/{split}/{lang}/{instance}",
            "module": "ffn", "metrics": "{}", "num_layers": 2}
    rows = [{**base, "source_layer": None, "target_layer": None, "correct": vanilla}]
    rows += [{**base, "source_layer": i, "target_layer": j, "correct": c} for (i, j), c in grid.items()]
    return rows


def _frame():
    rows = []
    # sample, sw: instance 0 solved by (0,0) and (1,0); instance 1 by (1,1) only; instance 2 by nothing
    rows += _rows("xnli", "sample", "sw", 0, False, {(0, 0): True, (1, 0): True, (0, 1): False, (1, 1): False})
    rows += _rows("xnli", "sample", "sw", 1, True, {(0, 0): False, (1, 0): False, (0, 1): False, (1, 1): True})
    rows += _rows("xnli", "sample", "sw", 2, False, {(0, 0): False, (1, 0): False, (0, 1): False, (1, 1): False})
    # sample, de: one instance, solved everywhere
    rows += _rows("xnli", "sample", "de", 0, True, {(0, 0): True, (1, 0): True, (0, 1): True, (1, 1): True})
    # unseen, sw: (1, 0) right on 1 of 2, vanilla on 0 of 2
    rows += _rows("xnli", "unseen", "sw", 0, False, {(0, 0): False, (1, 0): True})
    rows += _rows("xnli", "unseen", "sw", 1, False, {(0, 0): True, (1, 0): False})
    frame = pd.DataFrame(rows)
    frame["source_layer"] = frame["source_layer"].astype("Int64")
    frame["target_layer"] = frame["target_layer"].astype("Int64")
    return frame


def test_tables_by_hand():
    report = aggregate_frame(_frame())
    sample = report["tables"]["xnli/sample/ffn"]
    sw = sample["by_lang"]["sw"]
    assert sw["vanilla_accuracy"] == pytest.approx(1 / 3)
    assert sw["upper_bound"] == pytest.approx(2 / 3)  # instances 0 and 1; vanilla not counted
    assert sw["best_cell"] == {"source_layer": 0, "target_layer": 0, "accuracy": pytest.approx(1 / 3),  # tie: smallest
                               "correct": 1, "rows": 3}
    assert sw["per_source_layer"] == {0: pytest.approx(1 / 3), 1: pytest.approx(2 / 3)}
    assert sw["per_target_layer"] == {0: pytest.approx(1 / 3), 1: pytest.approx(1 / 3)}
    assert sw["heatmap"] == [[pytest.approx(1 / 3), 0.0], [pytest.approx(1 / 3), pytest.approx(1 / 3)]]
    assert sw["target_first_choice"] == 1  # (0,0) and (1,0) tie at j = 0: the larger i
    # micro over 4 instances vs mean/std over the 2 languages (population std)
    assert sample["upper_bound_overall"] == pytest.approx(3 / 4)
    assert sample["upper_bound_mean"] == pytest.approx((2 / 3 + 1) / 2)
    assert sample["upper_bound_std"] == pytest.approx((1 - 2 / 3) / 2)
    assert sample["vanilla_overall"] == pytest.approx(2 / 4)


def test_target_first_selection_is_applied_to_the_unseen_split():
    report = aggregate_frame(_frame())
    sw = next(e for e in report["target_first"] if e["lang"] == "sw")
    assert (sw["source_layer"], sw["target_layer"]) == (1, 0)
    assert sw["unseen_instances"] == 2 and sw["unseen_vanilla"] == 0.0 and sw["unseen_applied"] == 0.5


def test_compare_reports_deltas_and_renders():
    report = aggregate_frame(_frame())
    earlier = aggregate_frame(_frame()[lambda f: ~((f["lang"] == "sw") & (f["instance_id"].str.endswith("/2")))])
    deltas = {(d["table"], d["lang"]): d for d in compare(report, earlier)}
    sw = deltas[("xnli/sample/ffn", "sw")]
    assert sw["vanilla_delta"] == pytest.approx(1 / 3 - 1 / 2)
    assert sw["upper_bound_delta"] == pytest.approx(2 / 3 - 1)
    assert deltas[("xnli/sample/ffn", "de")]["vanilla_delta"] == 0
    report.update({"run_id": "t", "compared_with": "e", "deltas": list(deltas.values())})
    figures = render_figures(report)
    groups = ("xnli-sample-ffn-de", "xnli-sample-ffn-sw", "xnli-unseen-ffn-sw")
    assert set(figures) == {f"{kind}/{g}.png" for kind in ("heatmaps", "marginals") for g in groups} | {"overview.png"}
    assert all(png.startswith(b"\x89PNG") for png in figures.values())
    report["figures"] = sorted(figures)
    markdown = render_markdown(report)
    # 95% Wilson intervals (1 of 3: 6.1-79.2; 2 of 3: 20.8-93.9, as tabulated for the Wilson score interval)
    assert "| sw | 3 | 33.3 [6.1, 79.2] | 66.7 [20.8, 93.9] | 33.3 [6.1, 79.2] | (0, 0) | 1 |" in markdown
    assert "| **mean ± std** | 4 | 66.7 ± 33.3 | 83.3 ± 16.7 | 66.7 ± 33.3 |" in markdown
    assert "| xnli | ffn | sw | (1, 0) | 0.0 | 50.0 |" in markdown
    assert "| xnli/sample/ffn | sw | -16.7 | -33.3 |" in markdown


def test_html_report_is_self_contained_with_every_figure_embedded():
    import base64
    import re

    report = aggregate_frame(_frame())
    report.update({"run_id": "t"})
    figures = render_figures(report)
    page = render_html(report, figures)
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == len(figures)  # every figure, once
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    assert {base64.b64decode(src.split(",", 1)[1]) for src in sources} == set(figures.values())
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched from elsewhere
    assert "<script" not in page
    # the tables: per language, the best cell against vanilla, the target-first selection applied to unseen
    assert "<td>sw</td><td>3</td><td>33.3 [6.1, 79.2]</td><td>66.7 [20.8, 93.9]</td><td>33.3 [6.1, 79.2]</td>" in page
    assert "<td>xnli</td><td>ffn</td><td>sw</td><td>(1, 0)</td><td>2</td><td>0.0</td><td>50.0</td>" in page


def test_heatmap_shows_accuracy_minus_vanilla_centred_at_zero(monkeypatch):
    """The heatmap's colour scale is symmetric around 0 and its values are points over vanilla."""
    import matplotlib.axes

    shown = {}
    real_imshow = matplotlib.axes.Axes.imshow

    def spy(self, grid, **kwargs):
        shown.update(grid=grid, **kwargs)
        return real_imshow(self, grid, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", spy)
    from xtp_ray.results.report import heatmap_delta

    sw = aggregate_frame(_frame())["tables"]["xnli/sample/ffn"]["by_lang"]["sw"]  # vanilla 1/3
    heatmap_delta("xnli/sample/ffn", "sw", sw)
    assert shown["grid"][0][1] == pytest.approx(-100 / 3)  # (0, 1): 0 correct, vanilla 1/3
    assert shown["grid"][1][1] == pytest.approx(0.0)
    assert shown["vmin"] == -shown["vmax"] and shown["cmap"] == "RdBu"


def test_reports_keep_the_per_instance_outcomes_their_accuracies_are_made_of():
    from xtp_ray.results.paired import decode

    report = aggregate_frame(_frame())
    sw = report["tables"]["xnli/sample/ffn"]["by_lang"]["sw"]
    assert decode(sw["outcomes"]["vanilla"]) == {f"xnli/sample/sw/{k}": k == 1 for k in range(3)}
    assert decode(sw["outcomes"]["upper_bound"]) == {f"xnli/sample/sw/{k}": k in (0, 1) for k in range(3)}
    [entry] = [e for e in report["target_first"] if e["lang"] == "sw"]
    applied = decode(entry["outcomes"])
    assert sum(applied.values()) / len(applied) == entry["unseen_applied"]


def test_aggregate_history_and_tasks_import_neither_torch_nor_transformers(tmp_path):
    """The results floor and `xtp tasks` must start without the engine's heavy imports (~6 s, 0.4 GiB)."""
    import subprocess
    import sys

    frame = _frame()
    run = tmp_path / "out" / "night1" / "candidates"
    run.mkdir(parents=True)
    frame.to_parquet(run / "part-0.parquet")
    code = """
import sys
from xtp_ray.cli import main
code = main(sys.argv[1:])
heavy = [name for name in ("torch", "transformers", "vllm", "ray") if name in sys.modules]
print("HEAVY", heavy)
sys.exit(code)
"""
    for argv in (["aggregate", "--output", str(tmp_path / "out"), "--run-id", "night1"],
                 ["history", "--output", str(tmp_path / "out")], ["tasks"]):
        done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "HEAVY []" in done.stdout, (argv, done.stdout[-500:])


# The documented shape of report/results.json (README, "Results files"): lm-evaluation-harness's.
RESULTS_SCHEMA = {
    "type": "object",
    "required": ["results", "configs", "versions", "n-samples", "config", "git_hash", "date"],
    "properties": {
        "results": {"type": "object", "additionalProperties": {
            "type": "object", "required": ["alias", "acc,none", "acc_stderr,none"],
            "properties": {"acc,none": {"type": "number", "minimum": 0, "maximum": 1},
                           "acc_stderr,none": {"type": ["number", "null"], "minimum": 0},
                           "acc_best_cell,none": {"type": "number"}, "upper_bound,none": {"type": "number"}}}},
        "configs": {"type": "object"}, "versions": {"type": "object"},
        "n-samples": {"type": "object", "additionalProperties": {
            "type": "object", "required": ["original", "effective"]}},
        "git_hash": {"type": ["string", "null"]}, "date": {"type": "number"},
    },
}


def test_results_json_has_lm_eval_harness_shape(tmp_path):
    import json

    import jsonschema

    from xtp_ray.results.aggregation import aggregate_run

    run = tmp_path / "out" / "night1" / "candidates"
    run.mkdir(parents=True)
    _frame().to_parquet(run / "part-0.parquet")
    aggregate_run(str(tmp_path / "out"), "night1")
    results = json.loads((tmp_path / "out" / "night1" / "report" / "results.json").read_text())
    jsonschema.validate(results, RESULTS_SCHEMA)
    sw = results["results"]["xtp_xnli_sample_ffn_sw"]
    assert sw["acc,none"] == pytest.approx(1 / 3) and sw["upper_bound,none"] == pytest.approx(2 / 3)
    # outcomes 0, 1, 0: sample variance (ddof 1) = 1/3, stderr = sqrt(1/3) / sqrt(3) = 1/3
    assert sw["acc_stderr,none"] == pytest.approx(1 / 3)
    assert results["n-samples"]["xtp_xnli_sample_ffn_sw"] == {"original": 3, "effective": 3}
    assert results["results"]["xtp_xnli_sample_ffn_de"]["acc_stderr,none"] is None  # one instance: no stderr


def test_any_language_name_renders_in_figures_and_markdown():
    """Names are checked before they reach a report, but a report renders whatever it holds: '$' is not
    mathtext (matplotlib raises on an unknown command between two '$'), HTML and table pipes are escaped,
    file names stay names."""
    from xtp_ray.results.report import render_figures, render_html, render_markdown

    frame = _frame()
    odd = "$\\nosuchcommand$|<b>x</b>"
    frame.loc[frame["lang"] == "de", "lang"] = odd
    report = {"run_id": "r", **aggregate_frame(frame)}
    figures = render_figures(report)
    report["figures"] = sorted(figures)
    assert all(name.count("/") <= 1 and "<" not in name and "$" not in name for name in figures)
    markdown = render_markdown(report)
    assert "| \\$\\\\nosuchcommand\\$\\|&lt;b&gt;x&lt;/b&gt; |" in markdown and "<b>" not in markdown
    assert "<b>x</b>" not in render_html(report, figures)

"""`xtp history`: runs ordered by start time, series per (table, lang, metric), exit 3 on a regression."""
import json
from pathlib import Path

import pytest

from xtp_ray.cli import main


def _report(run_id, vanilla, upper, applied=None):
    sw = {"instances": 10, "vanilla_accuracy": vanilla, "upper_bound": upper}
    report = {"run_id": run_id, "tables": {"xnli/sample/ffn": {"by_lang": {"sw": sw, "de": {
        "instances": 10, "vanilla_accuracy": 0.5, "upper_bound": 0.9}}}}, "target_first": []}
    if applied is not None:
        report["target_first"] = [{"task": "xnli", "module": "ffn", "lang": "sw", "source_layer": 3,
                                   "target_layer": 0, "unseen_vanilla": vanilla, "unseen_applied": applied}]
    return report


def _write_run(output: Path, run_id, started, report):
    run = output / run_id
    (run / "report").mkdir(parents=True)
    (run / "report" / "report.json").write_text(json.dumps(report))
    (run / "manifest.json").write_text(json.dumps({"attempts": [{"started": started}, {"started": started + 99}]}))


@pytest.fixture
def output(tmp_path):
    out = tmp_path / "runs"
    # names sort differently from start times: the order must come from the manifests
    _write_run(out, "b-night1", 1000.0, _report("b-night1", 0.40, 0.80, applied=0.50))
    _write_run(out, "a-night2", 2000.0, _report("a-night2", 0.42, 0.85, applied=0.55))
    _write_run(out, "c-night3", 3000.0, _report("c-night3", 0.41, 0.70, applied=0.56))
    return out


def test_history_orders_runs_and_flags_the_drop(output, capsys):
    assert main(["history", "--output", str(output), "--threshold", "5"]) == 3
    printed = capsys.readouterr().out
    assert "regression: xnli/sample/ffn sw upper_bound: 85.0 -> 70.0 (-15.0 points)" in printed
    history = json.loads((output / "history" / "history.json").read_text())
    assert [r["run_id"] for r in history["runs"]] == ["b-night1", "a-night2", "c-night3"]
    series = {(s["table"], s["lang"], s["metric"]): s["values"] for s in history["series"]}
    assert series[("xnli/sample/ffn", "sw", "vanilla")] == [0.40, 0.42, 0.41]  # -1 point: under the threshold
    assert series[("xnli/unseen/ffn", "sw", "target_first")] == [0.50, 0.55, 0.56]
    assert [(r["lang"], r["metric"]) for r in history["regressions"]] == [("sw", "upper_bound")]
    assert (output / "history" / "history.png").read_bytes().startswith(b"\x89PNG")
    page = (output / "history" / "history.html").read_text()
    assert 'src="data:image/png;base64,' in page and "REGRESSION" in page


def test_history_of_chosen_runs_without_a_regression_exits_0(output, capsys):
    assert main(["history", "--output", str(output), "--run-ids", "b-night1,a-night2"]) == 0
    history = json.loads((output / "history" / "history.json").read_text())
    assert [r["run_id"] for r in history["runs"]] == ["b-night1", "a-night2"] and history["regressions"] == []
    # a threshold above the drop lets the full history pass too
    assert main(["history", "--output", str(output), "--threshold", "15.5"]) == 0


def test_history_names_a_missing_run(output, capsys):
    assert main(["history", "--output", str(output), "--run-ids", "b-night1,nope"]) == 2
    assert "run 'nope'" in capsys.readouterr().err

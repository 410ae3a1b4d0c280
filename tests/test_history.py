"""`xtp history`: runs ordered by start time, series per (table, lang, metric), exit 3 on a regression."""
import json
from pathlib import Path

import pytest

from xtp_ray.cli import main
from xtp_ray.results.paired import encode, holm, mcnemar_exact, wilson


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
    assert ("regression: xnli/sample/ffn sw upper_bound: 85.0 -> 70.0 (-15.0 points, not tested: no per-instance "
            "outcomes)") in printed  # reports of an older version: judged on the drop alone
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


def test_a_directory_that_is_no_run_id_is_skipped_with_a_warning(output, caplog):
    """A folder beside the runs whose name is no run id (a space, a leading dot) is named in a warning and
    left out; the runs are read as before."""
    _write_run(output, "night 4", 4000.0, _report("night 4", 0.10, 0.10))
    assert main(["history", "--output", str(output), "--threshold", "15.5"]) == 0
    history = json.loads((output / "history" / "history.json").read_text())
    assert [r["run_id"] for r in history["runs"]] == ["b-night1", "a-night2", "c-night3"]
    assert [r.getMessage() for r in caplog.records if "skipped 'night 4'" in r.getMessage()], caplog.text


def test_history_names_a_missing_run(output, capsys):
    assert main(["history", "--output", str(output), "--run-ids", "b-night1,nope"]) == 2
    assert "run 'nope'" in capsys.readouterr().err


def _paired_report(run_id, outcomes_by_lang):
    """A report as `aggregation` writes it, with per-instance outcomes (vanilla only)."""
    by_lang = {}
    for lang, outcomes in outcomes_by_lang.items():
        by_lang[lang] = {"instances": len(outcomes), "vanilla_accuracy": sum(outcomes.values()) / len(outcomes),
                         "outcomes": {"vanilla": encode(outcomes)}}
    return {"run_id": run_id, "tables": {"xnli/sample/ffn": {"by_lang": by_lang}}, "target_first": []}


def _nights(tmp_path, flipped, drop_ids=0):
    """Two nights over 50 instances per language; in sw the newest night gets `flipped` right answers wrong."""
    out = tmp_path / f"runs-{flipped}-{drop_ids}"
    before = {lang: {f"{lang}-{k}": k % 5 != 0 for k in range(50)} for lang in ("sw", "de", "zh")}  # 80% right
    after = {lang: dict(o) for lang, o in before.items()}
    right = [i for i, ok in after["sw"].items() if ok]
    for i in right[:flipped]:
        after["sw"][i] = False
    for i in list(after["de"])[:drop_ids]:  # the newest night scored fewer de instances
        del after["de"][i]
    _write_run(out, "night1", 1000.0, _paired_report("night1", before))
    _write_run(out, "night2", 2000.0, _paired_report("night2", after))
    return out


def test_two_flipped_answers_are_noise_fifteen_are_a_regression(tmp_path, capsys):
    """2 of 50 flipped: a 4-point drop, beyond the 2-point threshold, but McNemar's p = 0.5: exit 0.
    15 flipped: 30 points, p = 2 * 0.5^15 (Holm x3): exit 3."""
    assert main(["history", "--output", str(_nights(tmp_path, 2)), "--threshold", "2"]) == 0
    history = json.loads((tmp_path / "runs-2-0" / "history" / "history.json").read_text())
    sw = next(c for c in history["comparisons"] if c["lang"] == "sw")
    assert (sw["lost"], sw["gained"], sw["instances"]) == (2, 0, 50) and sw["p_value"] == pytest.approx(0.5)
    assert sw["drop_points"] == pytest.approx(4.0) and history["regressions"] == []
    assert main(["history", "--output", str(_nights(tmp_path, 15)), "--threshold", "2"]) == 3
    printed = capsys.readouterr().out
    assert "regression: xnli/sample/ffn sw vanilla: 80.0 -> 50.0 (-30.0 points, 15 lost / 0 gained of 50" in printed
    history = json.loads((tmp_path / "runs-15-0" / "history" / "history.json").read_text())
    [regression] = history["regressions"]
    assert regression["p_holm"] == pytest.approx(3 * 2 * 0.5 ** 15)  # the smallest of three p-values, times 3
    page = (tmp_path / "runs-15-0" / "history" / "history.html").read_text()
    assert "15 / 0" in page and "REGRESSION" in page
    band = next(s for s in history["series"] if s["lang"] == "sw")["intervals"][0]
    assert band == pytest.approx(wilson(40, 50)) and band[0] < 0.8 < band[1]


def test_runs_over_different_instances_are_compared_on_both_and_say_so(tmp_path, capsys):
    assert main(["history", "--output", str(_nights(tmp_path, 0, drop_ids=10))]) == 0
    history = json.loads((tmp_path / "runs-0-10" / "history" / "history.json").read_text())
    de = next(c for c in history["comparisons"] if c["lang"] == "de")
    assert (de["instances"], de["only_previous"], de["only_newest"]) == (40, 10, 0)
    assert "compared on the 40 instances both runs scored" in de["note"]
    assert "note: xnli/sample/ffn de vanilla: compared on the 40 instances" in capsys.readouterr().out


def test_paired_statistics_against_known_values():
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 32)  # all five discordant one way
    assert mcnemar_exact(1, 9) == mcnemar_exact(9, 1) == pytest.approx(2 * 11 / 1024)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])  # step-down, kept monotone
    low, high = wilson(8, 10)  # the textbook 95% Wilson interval of 8/10
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)

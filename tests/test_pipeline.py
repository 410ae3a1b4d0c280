"""The distributed job on a real local Ray cluster: 2 actors, a tiny model, real instances.

One Ray session for the module (Ray is slow to start here).
"""
import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from support import candidate_rows, make_config  # noqa: E402

from xtp_ray.job.run import run_job  # noqa: E402
from xtp_ray.results.aggregation import aggregate_run  # noqa: E402

LAYERS = 3


pytestmark = pytest.mark.usefixtures("ray_local")


def _config(tmp_path, **overrides):
    values = dict(model=f"tiny:LlamaForCausalLM:{LAYERS}", tasks=["xnli", "xcopa"], langs=["en", "sw"],
                  splits=["sample"], limit=6, run_id="r1", min_actors=2, max_actors=2, shard_size=3,
                  batch_size=2, scoring="logprobs")
    return make_config(tmp_path, **{**values, **overrides})


def _key(row):
    return (row["instance_id"], row["module"], row["source_layer"], row["target_layer"])


def _direct_aggregates(rows):
    """Vanilla accuracy, upper bound and best cell computed plainly from the rows."""
    by_group = defaultdict(list)
    for row in rows:
        by_group[(row["task"], row["split"], row["module"], row["lang"])].append(row)
    out = {}
    for group, items in by_group.items():
        instances = {r["instance_id"] for r in items}
        vanilla = [r["correct"] for r in items if r["source_layer"] is None]
        solved = {r["instance_id"] for r in items if r["source_layer"] is not None and r["correct"]}
        per_cell = defaultdict(list)
        for r in items:
            if r["source_layer"] is not None:
                per_cell[(r["source_layer"], r["target_layer"])].append(r["correct"])
        out[group] = {"vanilla": sum(vanilla) / len(vanilla), "upper": len(solved) / len(instances),
                      "best": max(sum(v) / len(v) for v in per_cell.values()), "n": len(instances)}
    return out


def test_two_actors_complete_aggregated_and_resumed(tmp_path):
    config = _config(tmp_path, sharding="size")  # shard_size instances per task and language
    summary = run_job(config)
    assert summary["shards"] == 8 and summary["instances"] == 24  # 2 tasks x 2 langs x 6 instances
    rows = candidate_rows(config)
    assert len(rows) == 24 * (LAYERS * LAYERS + 1)
    assert len({_key(r) for r in rows}) == len(rows)
    first = rows[0]
    assert first["run_id"] == "r1" and first["model_revision"] == "tiny-seed0" and first["num_layers"] == LAYERS
    assert json.loads(first["config"])["scoring"] == "logprobs"
    assert all(r["option_logprobs"] and r["prediction"] in ("1", "2", "3") for r in rows)

    report = aggregate_run(config.output, config.run_id)
    direct = _direct_aggregates(rows)
    for (task, split, module, lang), expected in direct.items():
        got = report["tables"][f"{task}/{split}/{module}"]["by_lang"][lang]
        assert got["instances"] == expected["n"] == 6
        assert got["vanilla_accuracy"] == pytest.approx(expected["vanilla"])
        assert got["upper_bound"] == pytest.approx(expected["upper"])
        assert got["best_cell"]["accuracy"] == pytest.approx(expected["best"])
        assert got["upper_bound"] >= got["best_cell"]["accuracy"]
    report_dir = Path(config.output) / "r1" / "report"
    assert (report_dir / "report.md").read_text().count("\n| sw | 6 |") == 2
    assert len(list((report_dir / "heatmaps").glob("*.png"))) == 4 and (report_dir / "overview.png").stat().st_size
    assert (report_dir / "report.html").read_text().count('<img src="data:image/png;base64,') == 9  # 4 + 4 + 1

    # a rerun after losing half the shards restores exactly the same rows, no duplicates
    shard_files = sorted((Path(config.output) / "r1" / "candidates").glob("*.parquet"))
    for f in shard_files[::2]:
        f.unlink()
    again = run_job(config)
    assert again["shards_run"] == 4
    restored = candidate_rows(config)
    assert Counter(map(_key, restored)) == Counter(map(_key, rows))  # same rows, none twice
    assert {(_key(r), r["correct"]) for r in restored} == {(_key(r), r["correct"]) for r in rows}
    manifest = json.loads((Path(config.output) / "r1" / "manifest.json").read_text())
    assert [a["status"] for a in manifest["attempts"]] == ["complete", "complete"]
    assert manifest["attempts"][1]["shards_skipped_as_done"] == 4 and manifest["status"] == "complete"

    # the same run id over other instances would make shard names mean other rows: refused
    with pytest.raises(ValueError, match="planned over other instances"):
        run_job(_config(tmp_path, limit=5, sharding="size"))


def test_a_plan_by_cost_records_its_shards_and_resumes_under_itself(tmp_path):
    config = _config(tmp_path, run_id="bycost", limit=8)
    summary = run_job(config)
    manifest = json.loads((Path(config.output) / "bycost" / "manifest.json").read_text())
    plan = manifest["plan"]
    assert summary["shards"] == len(plan) > 8  # 32 instances: 8 pieces of 3-4, the last wave cut finer
    ids = [i for names in plan.values() for i in names]
    assert len(ids) == len(set(ids)) == 32
    timings = manifest["attempts"][0]["shards"]
    assert sorted(t["shard"] for t in timings) == sorted(plan)
    assert all(t["start"] < t["end"] and t["actor"] and t["node"] and t["predicted_s"] > 0 for t in timings)
    assert 0 < manifest["attempts"][0]["busy_share"] <= 1
    rows = candidate_rows(config)

    # rerun on another pool: the stored plan, not a new one (a new cut would rename the instances' shards)
    shard_files = sorted((Path(config.output) / "bycost" / "candidates").glob("*.parquet"))
    for f in shard_files[:3]:
        f.unlink()
    again = run_job(_config(tmp_path, run_id="bycost", limit=8, max_actors=3, min_actors=1))
    assert again["shards"] == len(plan) and again["shards_run"] == 3
    assert Counter(map(_key, candidate_rows(config))) == Counter(map(_key, rows))
    assert json.loads((Path(config.output) / "bycost" / "manifest.json").read_text())["plan"] == plan


def test_a_run_planned_before_plans_were_kept_is_refused_in_one_line(tmp_path):
    config = _config(tmp_path, run_id="old")
    run = Path(config.output) / "old"
    run.mkdir(parents=True)
    # as a run planned by an earlier version left it: the shard names and their digest, no plan
    manifest = {"run_id": "old", "config_digest": config.digest(), "shards": ["xnli-sample-sw-0000"],
                "plan_digest": "0123456789abcdef", "status": "complete", "attempts": [{"status": "complete"}]}
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError) as refused:
        run_job(config)
    line = str(refused.value)
    assert "\n" not in line and line.startswith("run 'old' in ") and "planned by an earlier xtp-ray" in line
    assert line.endswith("use a new run_id")
    assert json.loads((run / "manifest.json").read_text()) == manifest  # refused before any attempt
    assert not (run / "candidates").exists()


def test_generate_mode_scores_text_and_reports_bad_rows(tmp_path):
    data = tmp_path / "data" / "XNLI" / "XNLI_sample"
    source = Path(__file__).resolve().parents[1] / "xtp_ray" / "data" / "xtransplant_release" / "XNLI" / "XNLI_sample"
    for sub in ("split", "ans", "ans_lang"):
        (data / sub).mkdir(parents=True)
        for lang in ("en", "sw"):
            lines = (source / sub / f"{lang}.json").read_text().splitlines()[:3]
            if sub == "split" and lang == "sw":
                lines[1] = "{broken"
            (data / sub / f"{lang}.json").write_text("\n".join(lines) + "\n")
    config = _config(tmp_path, tasks=["xnli"], langs=["sw"], data_root=str(tmp_path / "data"), scoring="generate",
                     max_new_tokens=3, cells="target-first", min_actors=1, max_actors=1, run_id="gen")
    summary = run_job(config)
    assert summary["instances"] == 2
    bad = f"{data / 'split' / 'sw.json'}"
    assert [r["error"] for r in summary["left_out"]] == [f"{bad}:2: bad JSON (Expecting property name enclosed "
                                                         "in double quotes)"]
    errors = [json.loads(line) for line in (Path(config.output) / "gen" / "errors.jsonl").read_text().splitlines()]
    assert errors == summary["left_out"]
    assert {k: errors[0][k] for k in ("reason", "note", "task", "split", "lang", "file", "line", "rows")} == {
        "reason": "malformed", "note": False, "task": "xnli", "split": "sample", "lang": "sw", "file": bad,
        "line": 2, "rows": 1}
    rows = candidate_rows(config)
    assert len(rows) == 2 * (LAYERS + 1)
    assert all(1 <= len(r["token_ids"]) <= 3 and isinstance(r["prediction"], str) for r in rows)


def test_mkqa_runs_from_the_datasets_own_file(tmp_path):
    import shutil

    (tmp_path / "data" / "mkqa").mkdir(parents=True)
    shutil.copy(Path(__file__).parent / "data" / "mkqa" / "mkqa_sample6.jsonl.gz",
                tmp_path / "data" / "mkqa" / "mkqa.jsonl.gz")
    config = _config(tmp_path, tasks=["mkqa"], splits=["train"], langs=["de", "zh"], limit=None,
                     data_root=str(tmp_path / "data"), scoring="generate", max_new_tokens=3, cells="coarse",
                     min_actors=1, max_actors=1, run_id="mkqa")
    summary = run_job(config)
    assert summary["instances"] == 6  # 3 answerable of 6 per language: the others are notes, not errors
    assert [(r["reason"], r["note"], r["lang"], r["rows"]) for r in summary["left_out"]] == [
        ("no_answer", True, "de", 3), ("no_answer", True, "zh", 3)]
    rows = candidate_rows(config)
    assert len(rows) == 6 * 2 and {r["module"] for r in rows} == {"ffn"}  # the coarse setting: FFN 0 -> 0
    assert all(set(json.loads(r["metrics"])) == {"em", "f1"} for r in rows)
    report = aggregate_run(config.output, config.run_id)
    table = report["tables"]["mkqa/train/ffn"]["by_lang"]
    assert table["de"]["instances"] == table["zh"]["instances"] == 3
    assert set(table["zh"]["vanilla_metrics"]) == {"em", "f1"}
    results = json.loads((Path(config.output) / "mkqa" / "report" / "results.json").read_text())["results"]
    assert {"exact_match,none", "f1,none"} <= set(results["xtp_mkqa_train_ffn_zh"])


def test_an_own_task_runs_through_the_job_and_the_report(tmp_path):
    from test_custom_task import write_own_task

    root = write_own_task(tmp_path / "data")
    config = _config(tmp_path, tasks=["mybench"], splits=["test"], langs=["all"], limit=None, data_root=str(root),
                     min_actors=1, max_actors=1, run_id="own")
    summary = run_job(config)
    assert summary["instances"] == 4 and summary["left_out"] == []
    rows = candidate_rows(config)
    assert len(rows) == 4 * (LAYERS * LAYERS + 1) and {r["task"] for r in rows} == {"mybench"}
    report = aggregate_run(config.output, config.run_id)
    assert set(report["tables"]["mybench/test/ffn"]["by_lang"]) == {"en", "sw"}


def test_the_coarse_settings_give_the_papers_offline_scaling_table(tmp_path):
    import shutil

    from xtp_ray.tasks import bundled_root

    root = tmp_path / "data"
    shutil.copytree(Path(bundled_root()) / "xtransplant_release", root / "xtransplant_release")
    (root / "mkqa").mkdir()
    shutil.copy(Path(__file__).parent / "data" / "mkqa" / "mkqa_sample6.jsonl.gz", root / "mkqa" / "mkqa.jsonl.gz")
    from test_culturalbench import write_culturalbench

    write_culturalbench(root, translations=("de", "ar"))
    config = _config(tmp_path, tasks=["xnli", "xcopa", "xquad", "mkqa", "globalopinionqa", "culturalbench"],
                     splits=["sample", "train", "test"], langs=["all"], limit=2, data_root=str(root),
                     scoring="generate", max_new_tokens=3, cells="coarse", min_actors=1, max_actors=2, run_id="coarse")
    run_job(config)
    report = aggregate_run(config.output, config.run_id)
    rows = candidate_rows(config)
    [understanding, generation, culture] = report["offline_scaling"]
    assert (culture["task_type"], culture["setting"], culture["ID"]["task"], culture["OOD"]["task"]) == \
        ("culture", "(first, first)", "globalopinionqa", "culturalbench")
    # limit 2 takes question 0 whole (its four rows): a question is scored whole or not at all
    bench = report["tables"]["culturalbench/test/ffn"]["by_lang"]
    assert set(bench) == {"ar", "de", "en"}
    assert all(v["instances"] == 1 and v["row_instances"] == 4 for v in bench.values())
    assert (understanding["task_type"], understanding["granularity"], understanding["setting"]) == \
        ("understanding", "attn", "(last, first)")
    assert (generation["task_type"], generation["granularity"], generation["setting"]) == \
        ("generation", "ffn", "(first, first)")
    assert (understanding["ID"]["task"], understanding["OOD"]["task"]) == ("xnli", "xcopa")
    assert (generation["ID"]["task"], generation["OOD"]["task"]) == ("xquad", "mkqa")
    for row in (understanding, generation):  # against the plain definition, from the rows (not grouped)
        for side in ("ID", "OOD"):
            entry = row[side]
            for lang, v in entry["by_lang"].items():
                mine = [r for r in rows if r["task"] == entry["task"] and r["lang"] == lang]
                cell = [r["correct"] for r in mine if r["source_layer"] is not None]
                vanilla = [r["correct"] for r in mine if r["source_layer"] is None]
                assert v["transplanted"] == pytest.approx(sum(cell) / len(cell))
                assert v["vanilla"] == pytest.approx(sum(vanilla) / len(vanilla))
    report_dir = Path(config.output) / "coarse" / "report"
    assert "## Offline scaling" in (report_dir / "report.md").read_text()
    assert "Offline scaling" in (report_dir / "report.html").read_text()
    assert json.loads((report_dir / "report.json").read_text())["offline_scaling"] == report["offline_scaling"]
    assert not (report_dir / "heatmaps").exists() and report["figures"] == ["overview.png"]  # single cells

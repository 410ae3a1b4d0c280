"""Nothing left out silently: every left-out row, for any reason, is a record of errors.jsonl, counted by
reason in the run's last line (exit 2 for bad data, 0 for notes only), and named per task and language in
the report, its tables saying where their languages shrank (issue 34: XQuAD lost 11 of 12 languages to
the length limit with no word)."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

from test_culturalbench import culturalbench_rows, write_culturalbench

from xtp_ray.results import leftout

RELEASE = Path(__file__).resolve().parents[1] / "xtp_ray" / "data" / "xtransplant_release"
PAD = " padding" * 100  # some 500 tokens of the tiny models' tokenizer: over a 400-token limit


def write_xnli(root: Path, langs=("en", "sw", "de"), broken=None, shifted=None, padded=None) -> Path:
    """The bundled XNLI sample's files for `langs` under root: `broken` gets bad JSON on line 2, `shifted`
    every gold from line 11 on changed (a shifted tail), `padded` prompts too long for 400 tokens."""
    source = RELEASE / "XNLI" / "XNLI_sample"
    for sub in ("split", "ans", "ans_lang"):
        (root / "XNLI" / "XNLI_sample" / sub).mkdir(parents=True, exist_ok=True)
        for lang in langs:
            lines = (source / sub / f"{lang}.json").read_text().splitlines()
            if sub == "split" and lang == broken:
                lines[1] = "{broken"
            if sub == "split" and lang == padded:
                lines = [json.dumps(PAD + json.loads(line)) for line in lines]
            if sub == "ans" and lang == shifted:
                lines = lines[:10] + [json.dumps("3" if json.loads(line) != "3" else "1") for line in lines[10:]]
            (root / "XNLI" / "XNLI_sample" / sub / f"{lang}.json").write_text("\n".join(lines) + "\n")
    return root


def _config(tmp_path, **values):
    from support import make_config

    return make_config(tmp_path, **{"model": "tiny:LlamaForCausalLM:2", "cells": "0:1", "scoring": "logprobs",
                                    **values})


# ---------------------------------------------------------------- loading: one record per reason

def test_loading_names_every_reason_with_its_task_split_and_language(tmp_path):
    import shutil

    from xtp_ray.job.plan import load_slices

    root = write_xnli(tmp_path / "data", broken="sw", shifted="de")
    (root / "xquad").mkdir()
    (root / "xquad" / "xquad.en.json").write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": [
        {"context": "Ray runs tasks.", "qas": [{"id": "q1", "question": "What runs tasks?",
                                                 "answers": [{"text": "Ray", "answer_start": 0}]}]}]}]}))
    (root / "xquad" / "xquad.de.json").write_text(json.dumps({"version": "1.1", "data": []}))  # no instance
    rows = culturalbench_rows()
    del rows[1]["answer"]  # question 0 loses a row to a missing field: its other three are left out with it
    write_culturalbench(root, rows)
    (root / "mkqa").mkdir()
    shutil.copy(Path(__file__).parent / "data" / "mkqa" / "mkqa_sample6.jsonl.gz", root / "mkqa" / "mkqa.jsonl.gz")

    config = _config(tmp_path, tasks=["xnli", "xquad", "culturalbench", "mkqa"], splits=["sample", "test", "train"],
                     langs=["all"], data_root=str(root), limit=None, scoring="generate")
    slices, records = load_slices(config)
    assert all(set(r) == set(leftout.KEYS) for r in records)
    by_reason = {}
    for r in records:
        by_reason.setdefault(r["reason"], []).append(r)
    assert set(by_reason) == {"malformed", "misaligned", "empty", "missing", "group_skipped", "no_answer"}

    [bad] = [r for r in by_reason["malformed"] if r["task"] == "xnli"]
    assert (bad["split"], bad["lang"], bad["line"], bad["rows"], bad["note"]) == ("sample", "sw", 2, 1, False)
    assert bad["file"].endswith("split/sw.json") and bad["error"].startswith(f"{bad['file']}:2: bad JSON")

    [shift] = by_reason["misaligned"]
    assert (shift["task"], shift["lang"], shift["line"], shift["rows"]) == ("xnli", "de", 11, 40)
    assert len(slices[("xnli", "sample", "de")]) == 10  # the 40 shifted pairs are the 40 rows of the record

    [empty] = by_reason["empty"]
    assert (empty["task"], empty["split"], empty["lang"], empty["rows"]) == ("xquad", "test", "de", None)
    assert ("xquad", "test", "de") not in slices

    [absent] = by_reason["missing"]  # asked for (xquad, sample), and this root holds no release XQuAD
    assert (absent["task"], absent["split"], absent["lang"], absent["rows"]) == ("xquad", "sample", None, None)
    assert leftout.describe([absent]) == "no data for xquad sample"
    assert leftout.total([absent]) == "0 rows and 1 task split without data"

    [missing] = [r for r in by_reason["malformed"] if r["task"] == "culturalbench" and r["lang"] == "en"]
    assert missing["field"] == "answer" and missing["lang"] == "en"
    skipped = [r for r in by_reason["group_skipped"] if r["lang"] == "en"]
    assert [(r["field"], r["rows"]) for r in skipped] == [("question_idx", 3)]
    assert len(slices[("culturalbench", "test", "en")]) == 8  # questions 1 and 2, whole

    notes = by_reason["no_answer"]
    assert notes and all(r["note"] and r["task"] == "mkqa" and r["rows"] >= 1 for r in notes)
    assert all(not r["note"] for reason, rs in by_reason.items() if reason != "no_answer" for r in rs)


# ---------------------------------------------------------------- the actor: too long, and the group

def test_a_too_long_member_takes_its_group_and_both_ride_in_the_shard_footer(tmp_path, tiny_model_dir):
    from xtp_ray.candidates import committed_footers
    from xtp_ray.job.actor import GridSearch
    from xtp_ray.job.config import RunConfig
    from xtp_ray.job.shards import candidates_dir, write_shard
    from xtp_ray.tasks import load_instances

    root = write_culturalbench(tmp_path / "data")
    instances, _ = load_instances("culturalbench", "en", "test", str(root))
    instances = instances[:8]  # questions 0 and 1
    instances[2] = dataclasses.replace(instances[2], recipient=PAD + instances[2].recipient)
    config = RunConfig(model=str(tiny_model_dir), cells="0:0", scoring="logprobs", output=str(tmp_path / "out"),
                       max_prompt_tokens=400, data_root=str(root))
    actor = GridSearch(config.to_json())
    table, skipped, _ = actor.run_shard(instances)
    assert [(s["reason"], s["instance_id"]) for s in skipped] == [("too_long", instances[2].id)] + [
        ("group_skipped", instances[k].id) for k in (0, 1, 3)]
    assert skipped[0]["field"] == "recipient" and skipped[0]["limit"] == 400
    assert "exceeds the limit of 400 tokens" in skipped[0]["error"]
    assert all((s["task"], s["split"], s["lang"], s["rows"]) == ("culturalbench", "test", "en", 1) for s in skipped)
    assert {r["instance_id"] for r in table.to_pylist()} == {i.id for i in instances[4:]}

    write_shard(config, "culturalbench-test-en-00000", table, skipped)
    footers, _ = committed_footers(candidates_dir(config))
    assert leftout.skipped_in(footers, ["culturalbench-test-en-00000", "not-committed"]) == skipped


def test_skipped_rows_of_older_shards_are_read_back_as_records():
    old = {"x": {"xtp_skipped": json.dumps([
        {"instance_id": "xnli/sample/sw/3", "reason": "recipient prompt of 500 tokens + 0 new tokens exceeds the "
                                                       "limit of 400 tokens"},
        {"instance_id": "culturalbench/test/en/1", "reason": "its group 0 lost a member to the length limit"}])}}
    records = leftout.skipped_in(old, ["x"])
    assert [(r["reason"], r["task"], r["split"], r["lang"], r["instance_id"]) for r in records] == [
        ("too_long", "xnli", "sample", "sw", "xnli/sample/sw/3"),
        ("group_skipped", "culturalbench", "test", "en", "culturalbench/test/en/1")]
    assert records[0]["error"].startswith("xnli/sample/sw/3: recipient prompt of 500")


# ---------------------------------------------------------------- counting, the last line, the report

def _records():
    too_long = [leftout.record("too_long", f"xquad/test/{lang}/{k}: too long", task="xquad", split="test", lang=lang,
                               instance_id=f"xquad/test/{lang}/{k}", limit=1024)
                for lang in ("ar", "de") for k in (0, 1)]
    too_long.append(leftout.record("too_long", "xquad/test/en/1: too long", task="xquad", split="test", lang="en",
                                   instance_id="xquad/test/en/1", limit=1024))
    bad = leftout.record("malformed", "F:2: bad JSON", task="xquad", split="test", lang="en", file="F", line=2)
    whole = leftout.record("malformed", "G: not UTF-8", task="xquad", split="test", lang="el", file="G", rows=None)
    note = leftout.record("no_answer", "M: 3 record(s) ...", note=True, task="mkqa", split="train", lang="de",
                          file="M", rows=3)
    return too_long + [bad, whole, note]


def test_the_records_are_counted_by_reason():
    records = _records()
    errors = [r for r in records if not r["note"]]
    assert leftout.total(errors) == "6 rows and 1 whole file"
    assert leftout.describe(errors) == ("5 rows longer than 1,024 tokens, 1 malformed row, "
                                        "1 whole file unreadable or malformed")
    assert leftout.describe([records[-1]]) == "3 rows with a No Answer gold"


def test_the_last_line_counts_by_reason_and_only_bad_data_exits_2(capsys):
    from xtp_ray.job.entry import finish_left_out, print_left_out

    records = _records()
    languages = leftout.lost_languages(records, {("xquad", "test"): {"en"}, ("mkqa", "train"): {"de"}})
    assert languages["xquad/test"] == {"shown": ["en"], "all": ["ar", "de", "el", "en"], "lost": ["ar", "de", "el"]}
    print_left_out(records, languages)
    assert finish_left_out(records, "OUT/r") == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "left out: xquad/test/ar/0: too long" and "note: M: 3 record(s) ..." in err
    assert "lost whole: xquad test: 3 of 4 languages (ar, de, el)" in err
    assert err[-1] == ("xtp run: 6 rows and 1 whole file left out (5 rows longer than 1,024 tokens, 1 malformed "
                       "row, 1 whole file unreadable or malformed); notes: 3 rows left out by the tasks' own rules "
                       "(3 rows with a No Answer gold): listed above and in OUT/r/errors.jsonl; the rest ran")
    assert finish_left_out(records[-1:], "OUT/r") == 0  # notes only
    assert capsys.readouterr().err.startswith("xtp run: notes: 3 rows left out by the tasks' own rules")
    assert finish_left_out([], "OUT/r") == 0 and capsys.readouterr().err == ""


def test_many_rows_of_one_reason_print_a_few_lines_and_a_count(capsys):
    from xtp_ray.job.entry import SHOWN_PER_REASON, print_left_out

    records = [leftout.record("too_long", f"xquad/test/ar/{k}: too long", task="xquad", split="test", lang="ar",
                              limit=1024) for k in range(SHOWN_PER_REASON + 7)]
    print_left_out(records, {})
    err = capsys.readouterr().err.splitlines()
    assert len(err) == SHOWN_PER_REASON + 1
    assert err[-1] == ("left out: ... and 7 more of xquad test ar (7 rows longer than 1,024 tokens), all in "
                       "errors.jsonl")


def test_the_report_names_lost_languages_per_task_and_in_the_tables(tmp_path):
    from xtp_ray.results.report import md

    tables = {"xquad/test/ffn": {"by_lang": {"en": {}}}, "mkqa/train/ffn": {"by_lang": {"de": {}}}}
    report = {"tables": tables, "left_out": leftout.section(_records(), tables)}
    part = report["left_out"]
    assert part["errors"] == "6 rows and 1 whole file" and part["notes"] == "3 rows"
    assert [(e["task"], e["lang"], e["in_tables"]) for e in part["by_lang"]] == [
        ("mkqa", "de", True), ("xquad", "ar", False), ("xquad", "de", False), ("xquad", "el", False),
        ("xquad", "en", True)]
    assert part["tasks"]["xquad/test"]["note"] == ("xquad test: 1 of 4 languages (lost: ar, de, el); 5 rows longer "
                                                   "than 1,024 tokens, 1 malformed row, 1 whole file unreadable or "
                                                   "malformed")
    assert leftout.table_note(report, "xquad/test/ffn").startswith("Left out: xquad test: 1 of 4 languages")
    side = {"task": "xquad", "split": "test", "by_lang": {"en": {}}}
    assert leftout.languages_text(report, side) == ("1 of 4 langs; 5 rows longer than 1,024 tokens, 1 malformed "
                                                    "row, 1 whole file unreadable or malformed")
    assert leftout.languages_text({"tables": {}}, side) == "1 langs"
    lines = leftout.render_markdown(report, md)
    assert lines[0] == "## Left out" and any("**no: lost whole**" in line and "| ar |" in line for line in lines)
    assert "<h2>Left out</h2>" in leftout.render_html(report)
    assert leftout.render_markdown({"left_out": leftout.section([], tables)}, md) == []


def test_errors_jsonl_of_older_runs_and_runs_without_one(tmp_path):
    assert leftout.read(str(tmp_path)) == []
    (tmp_path / "errors.jsonl").write_text(json.dumps({"error": "F:2: bad JSON"}) + "\n\n{torn\n")
    [old] = leftout.read(str(tmp_path))
    assert old["reason"] == "unclassified" and old["error"] == "F:2: bad JSON" and old["note"] is False
    assert leftout.describe([old]) == "1 line of an older version's errors.jsonl"
    records = _records()
    leftout.write(str(tmp_path), records)
    assert leftout.read(str(tmp_path)) == records


def test_aggregate_reports_a_run_without_errors_jsonl_as_before(tmp_path):
    """An older run (no errors.jsonl) aggregates, its report without a Left out section or table notes."""
    import pyarrow.parquet as pq

    from xtp_ray.results.aggregation import aggregate_run
    from xtp_ray.results.synthetic import synthetic_shard

    candidates = tmp_path / "old" / "candidates"
    candidates.mkdir(parents=True)
    pq.write_table(synthetic_shard("xnli", "sample", "sw", range(4), 2), candidates / "xnli-sample-sw-00000.parquet")
    report = aggregate_run(str(tmp_path), "old")
    assert report["left_out"]["by_lang"] == [] and report["left_out"]["errors"] is None
    text = (tmp_path / "old" / "report" / "report.md").read_text()
    assert "Left out" not in text and "xnli/sample/ffn" in text


# ---------------------------------------------------------------- a run, as a user runs it

def _run(argv, tmp_path):
    return subprocess.run([sys.executable, "-m", "xtp_ray.cli", "run", *argv], capture_output=True, text=True,
                          timeout=900, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ""})


def test_a_run_lists_every_row_it_left_out_once_also_when_resumed(tmp_path):
    """A language lost whole to the length limit and a malformed row: errors.jsonl holds both, the last line
    counts them, the run exits 2 and the report names the lost language; a resumed run still lists the
    too-long rows of the shards the first attempt committed, once."""
    root = write_xnli(tmp_path / "data", broken="sw", padded="de")
    out = tmp_path / "out"
    argv = ["--model", "tiny:LlamaForCausalLM:2", "--tasks", "xnli", "--splits", "sample", "--langs", "en,sw,de",
            "--limit", "3", "--data-root", str(root), "--output", str(out), "--run-id", "r", "--cells", "0:1",
            "--max-prompt-tokens", "400", "--scoring", "logprobs", "--max-actors", "1"]
    done = _run(argv, tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == (f"xtp run: 4 rows left out (1 malformed row, 3 rows longer than 400 tokens): listed above and "
                    f"in {out}/r/errors.jsonl; the rest ran")
    assert "lost whole: xnli sample: 1 of 3 languages (de)" in done.stderr
    records = [json.loads(line) for line in (out / "r" / "errors.jsonl").read_text().splitlines()]
    assert [(r["reason"], r["lang"]) for r in records] == [("malformed", "sw")] + [("too_long", "de")] * 3
    assert [r["instance_id"] for r in records[1:]] == [f"xnli/sample/de/{k}" for k in range(3)]
    report = (out / "r" / "report" / "report.md").read_text()
    assert ("Left out: xnli sample: 2 of 3 languages \\(lost: de\\); 1 malformed row, 3 rows longer than 400 "
            "tokens") in report
    assert "| xnli | sample | de | 3 rows longer than 400 tokens | **no: lost whole** |" in report

    # resume: the de shards stay committed; errors.jsonl is gone and the sw shards are run again
    (out / "r" / "errors.jsonl").unlink()
    for shard in (out / "r" / "candidates").glob("xnli-sample-sw-*.parquet"):
        shard.unlink()
    again = _run(argv, tmp_path)
    assert again.returncode == 2, again.stderr[-3000:]
    assert again.stderr.strip().splitlines()[-1] == last
    assert [json.loads(line) for line in (out / "r" / "errors.jsonl").read_text().splitlines()] == records
    manifest = json.loads((out / "r" / "manifest.json").read_text())
    assert [a["skipped"] for a in manifest["attempts"]] == [3, 0]  # the de rows were found by the first attempt

"""Every bad input a first user meets, through the CLI: exit code 2, one line naming the file, row and
field (or the flag), no traceback, nothing written outside the output, nothing of the good rows lost.

Cases that need no Ray run in this process (`cli.main`); the ones that need a run (a bad language in
a datasets directory, a truncated shard, a lost manifest, an actor that cannot load its model) are in
test_bad_input_runs.py.
"""
import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xtp_ray.cli import main
from xtp_ray.tasks import bundled_root

RELEASE = Path(bundled_root()) / "xtransplant_release"


def _xnli_root(tmp_path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(RELEASE / "XNLI", root / "XNLI")
    return root / "XNLI" / "XNLI_sample"


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


# ---------------------------------------------------------------- data files (xtp tasks: the rest goes on)

def _non_utf8(tmp_path):
    sw = _xnli_root(tmp_path) / "split" / "sw.json"
    sw.write_bytes(sw.read_bytes()[:500] + b"\xff\xfe" + sw.read_bytes()[500:])
    return sw, "not UTF-8"


def _missing_answers(tmp_path):
    base = _xnli_root(tmp_path)
    (base / "ans" / "sw.json").unlink()
    return base / "ans" / "sw.json", "is unusable (missing file)"


def _empty_language_file(tmp_path):
    sw = _xnli_root(tmp_path) / "split" / "sw.json"
    sw.write_text("")
    return sw, "empty file"


def _fewer_recipients(tmp_path):
    sw = _xnli_root(tmp_path) / "split" / "sw.json"
    sw.write_text("\n".join(sw.read_text().splitlines()[:40]) + "\n")
    return sw, "parallel files differ in length"


def _malformed_xquad(tmp_path):
    root = tmp_path / "data"
    article = {"data": [{"paragraphs": [{"context": "Paris is in France.", "qas": [
        {"id": "q1", "question": "Where is Paris?", "answers": [{"text": "France"}]}]}]}]}
    _write(root / "xquad" / "xquad.en.json", json.dumps(article))
    _write(root / "xquad" / "xquad.de.json", json.dumps({"version": "1.1"}))  # no 'data'
    return root / "xquad" / "xquad.de.json", "malformed xquad file: no field 'data'"


def _malformed_globalopinionqa(tmp_path):
    root = tmp_path / "data"
    _write(root / "globalopinionqa" / "eval.json", json.dumps({"question": "not a list"}))
    return root / "globalopinionqa" / "eval.json", "malformed globalopinionqa file: expected a JSON list"


def _traversal_in_a_file_name(tmp_path):
    base = _xnli_root(tmp_path)
    odd = base / "split" / "$x.json"  # a language named by its file: never a path part, never mathtext
    shutil.copy(base / "split" / "sw.json", odd)
    return base.parents[1], "language '$x'"


@pytest.mark.parametrize("make", [_non_utf8, _missing_answers, _empty_language_file, _fewer_recipients,
                                  _malformed_xquad, _malformed_globalopinionqa, _traversal_in_a_file_name],
                         ids=lambda f: f.__name__.strip("_"))
def test_a_bad_data_file_is_named_and_the_rest_is_listed(tmp_path, capsys, make):
    named, reason = make(tmp_path)
    code = main(["tasks", "--data-root", str(tmp_path / "data")])
    out, err = capsys.readouterr()
    assert code == 0, err  # `xtp tasks` only lists: what is left out is named and counted, not failed
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert str(named) in lines[0] and reason in lines[0], lines[0]
    if (tmp_path / "data" / "XNLI").exists():  # the other languages go on, whole
        assert any(row.split()[:4] == ["xnli", "sample", "de", "50"] for row in out.splitlines()), out
        if "differ in length" in reason:
            assert any(row.split()[:4] == ["xnli", "sample", "sw", "40"] for row in out.splitlines()), out
    if "xquad" in str(named):
        assert any(row.split()[:4] == ["xquad", "test", "en", "1"] for row in out.splitlines()), out


# ---------------------------------------------------------------- flags, config and paths

def _yaml(tmp_path, text):
    return str(_write(tmp_path / "run.yaml", text))


def _no_tokenizer(tmp_path, tiny_model_dir):
    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(Path(tiny_model_dir) / name, model / name)
    return str(model)


def _truncated_shard(tmp_path):
    candidates = tmp_path / "out" / "night" / "candidates"
    candidates.mkdir(parents=True)
    table = pa.table({"task": ["xnli"], "correct": [True]})
    pq.write_table(table, candidates / "xnli-sample-sw-00000.parquet")
    data = (candidates / "xnli-sample-sw-00000.parquet").read_bytes()
    (candidates / "xnli-sample-sw-00000.parquet").write_bytes(data[: len(data) // 2])
    return ["aggregate", "--output", str(tmp_path / "out"), "--run-id", "night"]


def _file_as_output(tmp_path):
    blocker = _write(tmp_path / "out" / "afile", "x")
    return str(blocker / "sub")


RUN = ["run", "--limit", "1", "--langs", "sw", "--tasks", "xnli"]
CASES = {
    # case: (argv from tmp_path and the tiny model, what the one line must say)
    "run: model path that does not exist": (lambda t, m: RUN + ["--model", str(t / "nope"), "--output", str(t / "out")],
                                            "does not exist"),
    "run: model without a tokenizer": (lambda t, m: RUN + ["--model", _no_tokenizer(t, m), "--output", str(t / "out")],
                                       "has no tokenizer files"),
    "run: memory_budget_mb nan": (lambda t, m: RUN + ["--memory-budget-mb", "nan", "--output", str(t / "out")],
                                  "'memory_budget_mb': cannot read 'nan' as a finite number"),
    "run: lease_ttl_s .inf in YAML": (lambda t, m: ["run", "--config", _yaml(t, "lease_ttl_s: .inf\n"),
                                                    "--output", str(t / "out")], "'lease_ttl_s'"),
    "run: limit 2.7 in YAML": (lambda t, m: ["run", "--config", _yaml(t, "limit: 2.7\n"), "--output", str(t / "out")],
                               "'limit': cannot read 2.7 as an integer"),
    "run: --modules ''": (lambda t, m: RUN + ["--modules", "", "--output", str(t / "out")], "modules is empty"),
    "run: --splits ''": (lambda t, m: RUN + ["--splits", "", "--output", str(t / "out")], "splits is empty"),
    "run: --langs ''": (lambda t, m: ["run", "--langs", "", "--output", str(t / "out")], "langs is empty"),
    "run: a language that is a path": (lambda t, m: ["run", "--langs", "../../x", "--output", str(t / "out")],
                                       "language '../../x'"),
    "run: --run-id ../x": (lambda t, m: RUN + ["--run-id", "../x", "--output", str(t / "out")], "run_id '../x'"),
    "run: --compare-with an unknown run": (lambda t, m: RUN + ["--compare-with", "nosuch", "--output", str(t / "out")],
                                           "--compare-with 'nosuch': no report"),
    "run: --splits dev on the bundled samples": (lambda t, m: RUN + ["--splits", "dev", "--output", str(t / "out")],
                                                 "the bundled samples have no dev split"),
    "run: output under a file": (lambda t, m: RUN + ["--output", _file_as_output(t)], "not writable"),
    "run: the hf engine over 2 GPUs": (lambda t, m: RUN + ["--num-gpus-per-actor", "2", "--output", str(t / "out")],
                                       "the hf engine runs on one GPU per actor, not 2: for models beyond one GPU "
                                       "use engine: vllm"),
    "run: --tensor-parallel-size 0": (lambda t, m: RUN + ["--engine", "vllm", "--tensor-parallel-size", "0",
                                                          "--output", str(t / "out")],
                                      "tensor_parallel_size must be positive"),
    "run: --sharding random": (lambda t, m: RUN + ["--sharding", "random", "--output", str(t / "out")],
                               "sharding 'random' unknown"),
    "aggregate: --run-id ../victim/run": (lambda t, m: ["aggregate", "--output", str(t / "out"), "--run-id",
                                                        "../victim/run"], "run id '../victim/run'"),
    "aggregate: a truncated shard": (lambda t, m: _truncated_shard(t), "xnli-sample-sw-00000.parquet"),
    "aggregate: output under a file": (lambda t, m: ["aggregate", "--output", _file_as_output(t)], "error:"),
    "history: --run-ids ../x": (lambda t, m: ["history", "--output", str(t / "out"), "--run-ids", "../x"],
                                "run id '../x'"),
    "history: --alpha 2": (lambda t, m: ["history", "--output", str(t / "out"), "--alpha", "2"], "--alpha"),
    "tasks: a data root that does not exist": (lambda t, m: ["tasks", "--data-root", str(t / "nope")],
                                               "does not exist"),
    "tasks: a data root that is a file": (lambda t, m: ["tasks", "--data-root", str(_write(t / "f", "x"))],
                                          "is a file"),
    "grid: model path that does not exist": (lambda t, m: ["grid", "--model", str(t / "nope"), "--task", "xnli",
                                                           "--lang", "sw", "--output", str(t / "out" / "g.parquet")],
                                             "nope"),
    "grid: --limit 0": (lambda t, m: ["grid", "--model", m, "--task", "xnli", "--lang", "sw", "--limit", "0",
                                      "--output", str(t / "out" / "g.parquet")], "--limit must be at least 1"),
    "grid: --limit -1": (lambda t, m: ["grid", "--model", m, "--task", "xnli", "--lang", "sw", "--limit", "-1",
                                       "--output", str(t / "out" / "g.parquet")], "--limit must be at least 1"),
    "grid: --max-new-tokens -5": (lambda t, m: ["grid", "--model", m, "--task", "xnli", "--lang", "sw",
                                                "--max-new-tokens", "-5", "--output", str(t / "out" / "g.parquet")],
                                  "--max-new-tokens must be at least 1"),
    "grid: a language that is a path": (lambda t, m: ["grid", "--model", m, "--task", "xnli", "--lang", "../../x",
                                                      "--output", str(t / "out" / "g.parquet")], "language '../../x'"),
    "grid: no instances": (lambda t, m: ["grid", "--model", m, "--input", str(_write(t / "p.jsonl", "{bad\n")),
                                         "--output", str(t / "out" / "g.parquet")], "no instances"),
    "grid: output under a file": (lambda t, m: ["grid", "--model", m, "--task", "xnli", "--lang", "sw", "--output",
                                                _file_as_output(t)], "--output"),
    "bench: --layers 0": (lambda t, m: ["bench", "--layers", "0"], "--layers must be at least 1"),
    "bench: --instances 0": (lambda t, m: ["bench", "--instances", "0"], "--instances must be at least 1"),
    "bench: --prompt-tokens 0": (lambda t, m: ["bench", "--prompt-tokens", "0"], "--prompt-tokens must be at least 1"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_mistake_gets_one_line_and_exit_2(tmp_path, capsys, tiny_model_dir, case):
    make, expected = CASES[case]
    argv = make(tmp_path, str(tiny_model_dir))
    before = set(os.listdir(tmp_path.parent))
    code = main(argv)
    _, err = capsys.readouterr()
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if ": error:" in line or line.startswith(("left out", "config"))]
    assert len(lines) == 1, err
    assert expected in lines[0], lines[0]
    assert code == 2, err
    assert set(os.listdir(tmp_path.parent)) == before  # nothing beside this test's own directory
    assert not (tmp_path / "out" / "victim").exists() and not (tmp_path / "x").exists()
    for parquet in (tmp_path / "out").glob("*.parquet"):
        pytest.fail(f"{parquet} written for a refused command")


def test_an_s3_output_that_does_not_answer_is_one_line(tmp_path, capsys, monkeypatch):
    from support import free_port

    monkeypatch.setenv("XTP_S3_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("XTP_S3_TIMEOUT", "2")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    for argv in (["aggregate", "--output", "s3://bucket/out", "--run-id", "r"],
                 ["history", "--output", "s3://bucket/out"]):
        code = main(argv)
        _, err = capsys.readouterr()
        assert code == 2 and "Traceback" not in err, err
        assert len([line for line in err.splitlines() if ": error:" in line]) == 1, err


def test_debug_shows_the_traceback(tmp_path, capsys):
    code = main(["aggregate", "--output", str(tmp_path), "--run-id", "../x", "--debug"])
    _, err = capsys.readouterr()
    assert code == 2 and "Traceback" in err and "run id '../x'" in err


def test_a_bad_input_line_is_left_out_and_the_grid_runs_the_rest(tmp_path, capsys, tiny_model_dir):
    pairs = _write(tmp_path / "pairs.jsonl", "\n".join([
        json.dumps({"id": "a", "donor": "The cat sleeps.", "recipient": "Paka analala."}),
        json.dumps({"id": "b", "donor": "", "recipient": "x"}),
        json.dumps({"id": "c", "donor": "A dog runs.", "recipient": "Mbwa anakimbia."})]) + "\n")
    out = tmp_path / "out" / "g.parquet"
    code = main(["grid", "--model", str(tiny_model_dir), "--input", str(pairs), "--cells", "0:1",
                 "--max-new-tokens", "2", "--output", str(out)])
    _, err = capsys.readouterr()
    assert code == 2, err
    assert [line for line in err.splitlines() if line.startswith("left out")] == [
        f"left out: {pairs}:2: field 'donor' must be a non-empty string"]
    assert sorted(set(pq.read_table(out).column("id").to_pylist())) == ["a", "c"]
    assert not (tmp_path / "out" / "g.parquet.partial").exists()


def test_help_gives_each_run_flag_its_meaning_default_and_choices(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    from xtp_ray.job.config import RunConfig

    for name, info in RunConfig.model_fields.items():
        assert f"--{name.replace('_', '-')}" in text
        assert info.description.split()[0] in text, name
    assert "(default: logprobs; choices: generate, logprobs)" in text
    assert "--trust-remote-code, --no-trust-remote-code" in text  # a switch, as in `xtp grid`


def test_trust_remote_code_is_a_switch_and_warns(tmp_path, caplog, tiny_model_dir):
    import argparse

    from xtp_ray.engine.load import load_engine
    from xtp_ray.job.config import add_flags, load_config

    parser = argparse.ArgumentParser()
    add_flags(parser)
    assert load_config(parser.parse_args(["--trust-remote-code"])).trust_remote_code is True
    assert load_config(parser.parse_args([])).trust_remote_code is False
    with caplog.at_level("WARNING", logger="xtp_ray"):
        load_engine("hf", str(tiny_model_dir), trust_remote_code=True)
    assert any("trust_remote_code is on" in r.message and str(tiny_model_dir) in r.getMessage()
               for r in caplog.records)


def test_logprobs_scoring_does_not_count_new_tokens_against_the_context(tiny_model_dir):
    from xtp_ray.job.actor import GridSearch
    from xtp_ray.job.config import RunConfig
    from xtp_ray.tasks import load_instances

    [inst], _ = load_instances("xnli", "sw", "sample")[0][:1], None
    longest = None
    for scoring, skipped in (("logprobs", False), ("generate", True)):
        actor = GridSearch(RunConfig(model=str(tiny_model_dir), scoring=scoring, max_new_tokens=20).to_json())
        longest = max(len(actor.tokenizer(p).input_ids) for p in (inst.donor, inst.recipient))
        actor.max_tokens = longest  # the prompt fits exactly; 20 new tokens would not
        assert bool(actor._too_long(inst)) is skipped, scoring


def test_tasks_lists_a_datasets_directory_that_holds_some_splits_only(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    rows = {"premise": ["A man sleeps.", "Mtu analala."], "hypothesis": ["Someone rests.", "Mtu anapumzika."],
            "label": ["entailment"] * 2, "lang": ["en", "sw"]}
    datasets.DatasetDict({"dev": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "ds"))
    code = main(["tasks", "--data-root", f"hf:{tmp_path / 'ds'}"])
    out, err = capsys.readouterr()
    assert code == 0, err
    table = out.split("\ninstances: ")[0].splitlines()[1:]  # the rows with data; the splits without follow
    assert [row.split()[:4] for row in table] == [["xnli", "dev", "en", "1"], ["xnli", "dev", "sw", "1"]]

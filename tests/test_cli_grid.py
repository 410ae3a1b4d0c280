"""`xtp grid` on a model saved with save_pretrained, offline, as a user runs it."""
import json
import os
import subprocess
import sys

import pyarrow.parquet as pq

from xtp_ray.cli import main

PAIRS = [
    {"id": "a", "donor": "Premise: The girl squeezed her nose.", "recipient": "Nguzo: Msichana alifinya pua yake."},
    {"id": "b", "donor": "Options: (1) Entail", "recipient": "Binadamu: Unafikiri kuna uhusiano gani?"},
    {"id": "c", "donor": "Human: hello", "recipient": "Chaguo: (1)"},
]


def _write_pairs(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_grid_command_in_a_fresh_process(tiny_model_dir, tmp_path):
    pairs = _write_pairs(tmp_path / "in.jsonl", PAIRS)
    out = tmp_path / "fresh" / "out.parquet"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "xtp_ray.cli", "grid", "--model", str(tiny_model_dir),
                           "--input", str(pairs), "--output", str(out), "--module", "attn",
                           "--max-new-tokens", "4", "--batch-size", "2"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(out)
    assert table.column_names == ["id", "module", "source_layer", "target_layer", "token_ids", "text"]
    rows = table.to_pylist()
    assert len(rows) == 3 * (16 + 1)  # 4 layers: full grid + vanilla per instance
    vanilla = [r for r in rows if r["source_layer"] is None]
    assert [r["id"] for r in vanilla] == ["a", "b", "c"] and all(r["target_layer"] is None for r in vanilla)
    assert {(r["source_layer"], r["target_layer"]) for r in rows if r["id"] == "b"} - {(None, None)} == {
        (i, j) for i in range(4) for j in range(4)}
    assert all(1 <= len(r["token_ids"]) <= 4 and r["module"] == "attn" for r in rows)


def test_reference_engine_writes_the_same_rows(tiny_model_dir, tmp_path):
    pairs = _write_pairs(tmp_path / "in.jsonl", PAIRS[:2])
    common = ["grid", "--model", str(tiny_model_dir), "--input", str(pairs), "--cells", "3:0,0:3,-1:-1",
              "--max-new-tokens", "5"]
    assert main(common + ["--output", str(tmp_path / "fast.parquet")]) == 0
    assert main(common + ["--output", str(tmp_path / "ref.parquet"), "--engine", "reference"]) == 0
    fast = pq.read_table(tmp_path / "fast.parquet").to_pylist()
    ref = pq.read_table(tmp_path / "ref.parquet").to_pylist()
    assert fast == ref and len(fast) == 2 * 4


def test_grid_takes_a_task_instead_of_a_file(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "task.parquet"
    assert main(["grid", "--model", str(tiny_model_dir), "--task", "xnli", "--lang", "sw", "--split", "sample",
                 "--limit", "2", "--cells", "target-first", "--max-new-tokens", "2", "--output", str(out)]) == 0
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 2 * 5 and rows[0]["id"] == "xnli/sample/sw/0"


def test_bad_input_names_file_line_and_field(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(PAIRS[0]) + "\n" + json.dumps({"id": "x", "donor": "hi", "recipient": ""}) + "\n")
    out = str(tmp_path / "o.parquet")
    assert main(["grid", "--model", str(tiny_model_dir), "--input", str(bad), "--output", out]) == 2
    assert f"{bad}:2: field 'recipient' must be a non-empty string" in capsys.readouterr().err
    assert main(["grid", "--model", str(tiny_model_dir), "--input", str(_write_pairs(tmp_path / "ok.jsonl", PAIRS)),
                 "--cells", "9:0", "--output", str(tmp_path / "o.parquet")]) == 2
    assert "source layer 9 in cell '9:0' is out of range for a model with 4 layers" in capsys.readouterr().err


def test_tasks_command_lists_bundled_splits(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "xnli             sample  sw            50      -        0      0" in out  # no groups, none left out

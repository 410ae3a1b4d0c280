"""Bad input that only a run meets: a path in a datasets directory's language column, a truncated
shard, a lost manifest under another config, an actor that cannot load its model. One Ray per module."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from support import candidate_rows, make_config

from xtp_ray.errors import root_cause
from xtp_ray.job.run import run_job
from xtp_ray.job.shards import committed_shards

EVIL = "../../../../tmp/xtp-evil-lang"


def test_a_language_that_is_a_path_is_left_out_and_the_rest_runs(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {"premise": ["A man sleeps.", "Mtu analala.", "Mtu analala."],
            "hypothesis": ["Someone rests.", "Mtu anapumzika.", "Mtu anapumzika."],
            "label": ["entailment"] * 3, "lang": ["en", "sw", EVIL]}
    datasets.DatasetDict({"dev": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "ds"))
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "xtp_ray.cli", "run", "--model", "tiny:LlamaForCausalLM:2", "--tasks", "xnli",
            "--splits", "dev", "--langs", "all", "--data-root", f"hf:{tmp_path / 'ds'}", "--output", str(out),
            "--run-id", "r", "--cells", "0:1,1:0"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ""})
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "constructor arguments in the object store" not in done.stderr  # Ray's per-actor noise, filtered
    left_out = [line for line in done.stderr.splitlines() if line.startswith("left out")]
    assert len(left_out) == 1 and f"hf:{tmp_path / 'ds'}[dev]:3: field 'lang'" in left_out[0], left_out
    assert not Path("/tmp/xtp-evil-lang").exists() and not list(tmp_path.glob("**/xtp-evil-lang*"))
    shards = sorted(p.name for p in (out / "r" / "candidates").iterdir())
    assert shards == ["xnli-dev-en-00000.parquet", "xnli-dev-sw-00000.parquet"]
    assert (out / "r" / "report" / "report.html").exists()
    assert not (out / "r" / "_tmp").exists()  # no empty temporary directory left behind


@pytest.fixture(scope="module")
def ray_session(ray_local):
    yield


def _config(tmp_path, **values):
    return make_config(tmp_path, **{"model": "tiny:LlamaForCausalLM:2", "tasks": ["xnli"], "langs": ["sw", "de"],
                                    "limit": 2, "shard_size": 1, "cells": "0:1", "scoring": "logprobs", **values})


def test_a_truncated_shard_is_run_again_and_a_lost_manifest_cannot_mix_configs(tmp_path, ray_session):
    config = _config(tmp_path)
    run_job(config)
    candidates = Path(config.output) / "default" / "candidates"
    victim = candidates / "xnli-sample-sw-00001.parquet"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    assert "xnli-sample-sw-00001" not in committed_shards(config)
    summary = run_job(config)
    assert summary["shards_run"] == 1
    rows = candidate_rows(config)
    keys = [(r["instance_id"], r["source_layer"]) for r in rows]
    assert len(keys) == len(set(keys)) == 4 * 2  # 4 instances x (vanilla + one cell), none lost or twice
    assert pq.read_metadata(victim).num_rows == 2
    # the manifest gone, another configuration: the shards' own digests refuse the mix
    (Path(config.output) / "default" / "manifest.json").unlink()
    other = _config(tmp_path, cells="1:0")
    with pytest.raises(ValueError, match="made with another model/cells/scoring configuration"):
        run_job(other)
    assert len(candidate_rows(config)) == 8


def test_an_actor_that_cannot_load_its_model_reports_the_root_cause(tmp_path, ray_session, tiny_model_dir):
    import shutil

    model = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, model)
    (model / "model.safetensors").write_bytes(b"this is not a safetensors file")
    config = _config(tmp_path, model=str(model))
    with pytest.raises(Exception) as caught:
        run_job(config)
    cause = root_cause(caught.value)
    assert "safetensors" in cause.lower() or "header" in cause.lower(), cause
    assert "\n" not in cause and len(cause) < 400
    manifest = json.loads((Path(config.output) / "default" / "manifest.json").read_text())
    assert manifest["attempts"][-1]["error"] == cause  # the manifest leads with it too

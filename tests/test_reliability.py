"""Faults injected into real runs: killed actors, a killed job, a store that stops answering,
partial files, prompts too long. Nothing is lost, nothing duplicated, failures are named."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
boto3 = pytest.importorskip("boto3")

from support import S3Server, aws_env, candidate_rows, grid_search_actor_pids, make_config  # noqa: E402

from xtp_ray import storage  # noqa: E402
from xtp_ray.candidates import CANDIDATE_SCHEMA  # noqa: E402
from xtp_ray.job.config import RunConfig  # noqa: E402
from xtp_ray.job.lease import LeaseHeldError  # noqa: E402
from xtp_ray.job.run import run_job  # noqa: E402
from xtp_ray.job.shards import ShardWriteError, write_shard  # noqa: E402
from xtp_ray.results.aggregation import aggregate_run  # noqa: E402

SECRET = "xtp-reliability-secret-9f2Kx"


pytestmark = pytest.mark.usefixtures("ray_local")


def _config(tmp_path, **overrides):
    values = dict(model="tiny:LlamaForCausalLM:3", tasks=["xnli"], langs=["sw", "de"], limit=8, shard_size=2,
                  run_id="fault", scoring="generate", max_new_tokens=6, batch_size=2, min_actors=1, max_actors=1)
    return make_config(tmp_path, **{**values, **overrides})


def _assert_complete(config, instances):
    rows = candidate_rows(config)
    keys = Counter((r["instance_id"], r["source_layer"], r["target_layer"]) for r in rows)
    assert len(keys) == instances * (9 + 1), "lost candidates"
    assert set(keys.values()) == {1}, "duplicated candidates"


def _when(predicate, action, timeout=240):
    """Run action once predicate holds (polled in a thread); returns the thread and what action returned."""
    result = {}

    def watch():
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate():
                result["value"] = action()
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, result


def _committed(config):
    return len(list((Path(config.output) / config.run_id / "candidates").glob("*.parquet")))


def test_an_actor_killed_mid_batch_loses_and_duplicates_nothing(tmp_path):
    config = _config(tmp_path)

    def kill_actors():
        pids = grid_search_actor_pids()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        return pids

    # once the first shard is committed the actor is busy with the next one: kill it there
    thread, killed = _when(lambda: _committed(config) >= 1, kill_actors)
    summary = run_job(config)
    thread.join(timeout=5)
    assert killed.get("value"), "no actor was killed: the fault was not injected"
    assert summary["shards"] == 8
    _assert_complete(config, 16)


def test_a_killed_job_resumes_and_the_manifest_shows_both_attempts(tmp_path):
    config = _config(tmp_path, run_id="killed", lease_ttl_s=20.0)
    args = [sys.executable, "-m", "xtp_ray.cli", "run", "--model", config.model, "--tasks", "xnli", "--langs", "sw,de",
            "--limit", "8", "--shard-size", "2", "--output", config.output, "--run-id", "killed", "--scoring",
            "generate", "--max-new-tokens", "6", "--batch-size", "2", "--no-aggregate", "--lease-ttl-s", "20"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ""}
    proc = subprocess.Popen(args, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while _committed(config) < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the job ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
    proc.wait()
    # an actor of the killed job may finish the shard in hand before it notices: wait for it to go
    deadline = time.time() + 60
    while grid_search_actor_pids() and time.time() < deadline:
        time.sleep(0.2)
    assert not grid_search_actor_pids(), "actors of the killed job outlived it"
    partial = _committed(config)
    assert 1 <= partial < 8
    # the killed driver's lease is still there, and still its own: a plain rerun is refused...
    held = json.loads((Path(config.output) / "killed" / "lease.json").read_text())
    assert held["holder"]["pid"] == proc.pid
    if held["expires"] > time.time() + 1:
        with pytest.raises(LeaseHeldError, match=f"pid {proc.pid}"):
            run_job(config)
    # ...and --take-over resumes once it lapses, waiting no longer than its time to live
    start = time.time()
    summary = run_job(config, take_over=True)
    assert time.time() - start < 20 + summary["seconds"] + 30  # the lease wait + the work + Ray start
    assert summary["shards_run"] == 8 - partial
    _assert_complete(config, 16)
    manifest = json.loads((Path(config.output) / "killed" / "manifest.json").read_text())
    assert [a["status"] for a in manifest["attempts"]] == ["interrupted", "complete"]
    assert manifest["status"] == "complete"


def test_prompts_longer_than_the_context_are_skipped_per_instance(tmp_path):
    from xtp_ray.engine.tiny import tokenizer_corpus, train_tokenizer
    from xtp_ray.tasks import load_instances

    tokenizer = train_tokenizer(tokenizer_corpus(), 512)
    instances, _ = load_instances("xnli", "sw", "sample")
    lengths = sorted(max(len(tokenizer(i.donor).input_ids), len(tokenizer(i.recipient).input_ids))
                     for i in instances[:4])
    limit = lengths[1] + 6  # the two shortest fit (with 6 new tokens), the two longest do not
    config = _config(tmp_path, langs=["sw"], limit=4, run_id="long", max_prompt_tokens=limit)
    summary = run_job(config)
    assert summary["instances"] == 2 and len(summary["skipped"]) == 2
    assert all(s["reason"] == "too_long" and s["limit"] == limit and "exceeds the limit of" in s["error"]
               for s in summary["skipped"])
    errors = [json.loads(line) for line in (Path(config.output) / "long" / "errors.jsonl").read_text().splitlines()]
    assert errors == summary["skipped"]  # every one in errors.jsonl
    assert len({r["instance_id"] for r in candidate_rows(config)}) == 2


def test_aggregation_reads_only_committed_shards(tmp_path):
    config = _config(tmp_path, langs=["sw"], limit=2, run_id="partial", scoring="logprobs")
    run_job(config)
    run = Path(config.output) / "partial"
    (run / "_tmp").mkdir(exist_ok=True)
    (run / "_tmp" / "xnli-sample-sw-00007.abc.parquet").write_bytes(b"PAR1 interrupted mid-write")
    report = aggregate_run(config.output, "partial")
    assert report["tables"]["xnli/sample/ffn"]["instances"] == 2


@pytest.fixture()
def s3_server(monkeypatch):
    server = S3Server()
    for key, value in aws_env(server.endpoint, SECRET).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("XTP_S3_TIMEOUT", "1")
    boto3.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket="xtp")
    yield server
    server.stop()


def _table():
    import pyarrow as pa

    return pa.Table.from_pylist([], schema=CANDIDATE_SCHEMA)


def test_a_store_that_stops_answering_for_a_while_is_retried(s3_server):
    config = RunConfig(output="s3://xtp/runs", run_id="flaky", write_retries=6)
    s3_server.pause()
    timer = threading.Timer(4.0, s3_server.resume)
    timer.start()
    started = time.time()
    final = write_shard(config, "xnli-sample-sw-00000", _table(), [])
    timer.join()
    assert time.time() - started >= 4.0  # it really waited for the store
    assert storage.list_names("s3://xtp/runs/flaky/candidates") == ["xnli-sample-sw-00000.parquet"]
    assert final.endswith("candidates/xnli-sample-sw-00000.parquet")


def test_a_store_that_stays_down_fails_clearly_and_commits_nothing(s3_server, caplog):
    config = RunConfig(output="s3://xtp/runs", run_id="down", write_retries=2)
    s3_server.pause()
    try:
        with pytest.raises(ShardWriteError, match="shard xnli-sample-sw-00003 not written to "
                                                  "s3://xtp/runs/down/candidates/xnli-sample-sw-00003.parquet "
                                                  "after 2 attempts") as failure:
            write_shard(config, "xnli-sample-sw-00003", _table(), [])
    finally:
        s3_server.resume()
    assert SECRET not in str(failure.value) and SECRET not in caplog.text
    assert storage.list_names("s3://xtp/runs/down/candidates") == []


def test_a_run_whose_shards_cannot_be_written_fails_and_is_never_marked_complete(tmp_path):
    config = _config(tmp_path, langs=["sw"], limit=4, run_id="blocked", scoring="logprobs", write_retries=2)
    run = Path(config.output) / "blocked"
    run.mkdir(parents=True)
    (run / "_tmp").write_text("a file where the temporary folder goes: every shard write fails")
    with pytest.raises(Exception, match="shard xnli-sample-sw-0000[01] not written to .* after 2 attempts"):
        run_job(config)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["attempts"][-1]["status"] == "failed"
    assert "not written" in manifest["attempts"][-1]["error"]
    assert not list((run / "candidates").glob("*.parquet"))

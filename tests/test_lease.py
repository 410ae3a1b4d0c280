"""One driver per run: the lease on a local directory and on a real S3-compatible server
(moto's, on 127.0.0.1), then two concurrent `xtp run` drivers on each."""
import json
import os
import subprocess
import sys
import time

import pytest

boto3 = pytest.importorskip("boto3")

from support import s3_environment  # noqa: E402

from xtp_ray import storage  # noqa: E402
from xtp_ray.job import lease  # noqa: E402

SECRET = "xtp-lease-secret-Qm4"


@pytest.fixture(scope="module")
def s3():
    with s3_environment(SECRET, "xtp-lease") as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def run_uri(request, tmp_path):
    if request.param == "s3":
        request.getfixturevalue("s3")
        return f"s3://xtp-lease/runs/{tmp_path.name}"
    return str(tmp_path / "runs" / "r")


def test_a_second_driver_is_refused_naming_the_holder(run_uri):
    first = lease.acquire(run_uri, ttl_s=30)
    with pytest.raises(lease.LeaseHeldError, match=rf"pid {os.getpid()}, started .*expires in"):
        lease.acquire(run_uri, ttl_s=30)
    assert lease.refresh(first)
    lease.release(first)
    again = lease.acquire(run_uri, ttl_s=30)  # given back: free to take
    lease.release(again)


def test_take_over_waits_for_expiry_and_the_old_holder_loses(run_uri):
    old = lease.acquire(run_uri, ttl_s=1.5)
    start = time.time()
    new = lease.acquire(run_uri, ttl_s=30, take_over=True)
    waited = time.time() - start
    assert 1.0 < waited < 1.5 + 2.0  # no longer than the old lease's time to live (+ one poll)
    assert not lease.refresh(old) and old.lost  # the old holder finds out at its next refresh
    assert lease.refresh(new)
    lease.release(old)  # a lost lease's release must not remove the new holder's
    with pytest.raises(lease.LeaseHeldError):
        lease.acquire(run_uri, ttl_s=30)
    lease.release(new)


def test_an_expired_lease_is_taken_without_take_over_and_a_live_one_never(run_uri):
    stale = lease.acquire(run_uri, ttl_s=1)
    time.sleep(1.2)
    fresh = lease.acquire(run_uri, ttl_s=30)  # the killed driver's lease lapsed
    assert fresh.record["token"] != stale.record["token"]
    # take_over gives up on a holder that keeps refreshing: it is alive
    kept = lease.acquire(storage.join(run_uri, "other"), ttl_s=1)
    with lease.held(storage.join(run_uri, "third"), ttl_s=1.2) as alive:
        with pytest.raises(lease.LeaseHeldError, match="alive"):
            lease.acquire(storage.join(run_uri, "third"), ttl_s=30, take_over=True, poll_s=0.2)
        assert not alive.lost
    lease.release(kept)
    lease.release(fresh)


def test_held_gives_the_lease_back_on_an_exception(run_uri):
    with pytest.raises(RuntimeError, match="boom"):
        with lease.held(run_uri, ttl_s=30):
            raise RuntimeError("boom")
    lease.release(lease.acquire(run_uri, ttl_s=30))


# ---------------------------------------------------------------- two real drivers

def _run_args(output, run_id):
    return [sys.executable, "-m", "xtp_ray.cli", "run", "--model", "tiny:LlamaForCausalLM:2", "--tasks", "xnli",
            "--langs", "sw", "--limit", "4", "--shard-size", "2", "--output", output, "--run-id", run_id,
            "--no-aggregate"]


@pytest.mark.parametrize("store", ["local", "s3"])
def test_two_concurrent_xtp_runs_one_refused(store, tmp_path, request):
    if store == "s3":
        request.getfixturevalue("s3")
        output = "s3://xtp-lease/two"
    else:
        output = str(tmp_path / "out")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ""}
    first = subprocess.Popen(_run_args(output, "both"), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    lease_uri = storage.join(output, "both", "lease.json")
    deadline = time.time() + 120
    while not storage.exists(lease_uri) and first.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert storage.exists(lease_uri), "the first driver never took the lease"
    second = subprocess.run(_run_args(output, "both"), env=env, capture_output=True, text=True, timeout=120)
    first_out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, first_out[-3000:]
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"pid {first.pid}" in second.stderr and "being run by another driver" in second.stderr
    assert "--take-over" in second.stderr
    assert not storage.exists(lease_uri)  # the first gave it back when done
    manifest = json.loads(storage.read_text(storage.join(output, "both", "manifest.json")))
    assert [a["status"] for a in manifest["attempts"]] == ["complete"]  # the refused driver touched nothing
    assert SECRET not in first_out + second.stdout + second.stderr


def test_a_refresh_never_leaves_a_gap_a_competitor_can_take(tmp_path):
    """The local store swapped the file by rename-aside then create: between the two, the lease file was
    missing and a competitor's create won (a live holder then lost its lease). Hammered here."""
    import threading

    run_uri = str(tmp_path / "run")
    held = lease.acquire(run_uri, ttl_s=30)
    stop, stolen = threading.Event(), []

    def compete():
        uri = storage.join(run_uri, lease.LEASE_NAME)
        while not stop.is_set():
            if storage.create_exclusive(uri, json.dumps({"expires": 0})) is not None:
                stolen.append(1)
                return

    threads = [threading.Thread(target=compete) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(300):
            assert lease.refresh(held), "a refresh lost the lease to a create"
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not stolen
    lease.release(held)

"""`ray start --head` on 127.0.0.1, `ray job submit` of jobs/grid_search.py, SUCCEEDED; the cluster stopped
by PID (its session)."""
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import free_port, ray_start, stop_session

ROOT = Path(__file__).resolve().parents[1]
RAY = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")


def _ray(*args, timeout=120, env=None):
    return subprocess.run([RAY, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.skipif(RAY is None, reason="the ray CLI is not installed")
def test_ray_job_submit_runs_the_grid_search(tmp_path):
    port, dashboard = free_port(), free_port()
    temp_dir = Path("/tmp") / f"xtp-ray-{os.getpid()}"  # short: Ray's socket paths must stay under 108 bytes
    # Ray's token authentication, with a token made for this cluster only
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    started, session = ray_start(["--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                                  "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                                  f"--dashboard-port={dashboard}", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
                                 env)
    assert started.returncode == 0, started.stderr[-2000:]
    address = f"http://127.0.0.1:{dashboard}"
    output = tmp_path / "out"
    try:
        deadline = time.time() + 60
        while True:  # the head's job agent may come up after the dashboard answers (seen on a loaded host)
            submitted = _ray(
                "job", "submit", f"--address={address}", "--submission-id=xtp-test-job", "--no-wait",
                f"--working-dir={ROOT}",
                "--runtime-env-json", json.dumps({"excludes": [".venv", ".git", "xtp-out", "tests", "*.egg-info"],
                                                  "env_vars": {"HF_HUB_OFFLINE": "1"}}),
                "--", sys.executable, "jobs/grid_search.py", "--tasks", "xnli", "--langs", "sw", "--limit", "2",
                "--model", "tiny:LlamaForCausalLM:2", "--output", str(output), "--run-id", "submitted", env=env)
            if "No available agent to submit job" not in submitted.stderr or time.time() > deadline:
                break
            time.sleep(2)
        assert submitted.returncode == 0, submitted.stderr[-2000:]
        deadline, status = time.time() + 300, ""
        while time.time() < deadline:
            status = _ray("job", "status", f"--address={address}", "xtp-test-job", env=env).stdout.lower()
            if any(word in status for word in ("succeeded", "failed", "stopped")):
                break
            time.sleep(3)
        logs = _ray("job", "logs", f"--address={address}", "xtp-test-job", env=env).stdout
        assert "job 'xtp-test-job' succeeded" in status, status + logs[-3000:]
        assert "report: " in logs, logs[-3000:]
        candidates = sorted((output / "submitted" / "candidates").glob("*.parquet"))
        assert [c.name for c in candidates] == ["xnli-sample-sw-00000.parquet"]
        assert (output / "submitted" / "report" / "report.md").exists()
        assert (output / "submitted" / "report" / "report.html").exists()
    finally:
        left = stop_session(session)  # by PID: this cluster's processes only, never `ray stop`
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not left, f"processes of the test's cluster outlived it: {left}"

"""Ray's fake autoscaler on this machine: a head with no CPU for actors and a GPU-typed node type (1 CPU,
1 GPU, 0 to 1 nodes). A 0-GPU pool scales the cluster from 0 and completes on the CPU; a request no node
type can hold is refused within a minute, naming the request and the node types (read from the
autoscaling config the head's monitor was given); an actor given a GPU where CUDA is absent fails loudly.
The head is started as `AutoscalingCluster` starts it (its example config is
shipped in tests/data), and stopped by PID."""
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from support import ray_start, stop_session

RAY = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
pytestmark = pytest.mark.skipif(RAY is None or os.geteuid() != 0,
                                reason="needs the ray CLI and root (the loopback namespace: port 6379 is its own)")
GPU_NODE = {"resources": {"CPU": 1, "GPU": 1, "object_store_memory": 150_000_000}, "node_config": {},
            "min_workers": 0, "max_workers": 1}


@pytest.fixture(scope="module")
def autoscaling(tmp_path_factory):
    config = yaml.safe_load((Path(__file__).parent / "data" / "fake_autoscaler.yaml").read_text())
    config["available_node_types"] = {"gpu_node": GPU_NODE, "ray.head.default": {
        "resources": {"CPU": 0}, "node_config": {}, "max_workers": 0}}
    path = tmp_path_factory.mktemp("autoscaler") / "config.json"
    path.write_text(json.dumps(config))
    # the fake provider's nodes join the GCS at Ray's default port: this runs in a network namespace of its own
    port, temp = 6379, Path("/tmp") / f"xtp-a{os.getpid()}"
    env = {**os.environ, "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    started, session = ray_start(["--head", f"--autoscaling-config={path}", "--node-ip-address=127.0.0.1",
                                  f"--port={port}", "--num-cpus=0", "--object-store-memory=150000000",
                                  "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"], env)
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        yield {**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    finally:
        left = stop_session(session)  # the fake nodes are the monitor's children: in the same session
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"processes of the test's cluster outlived it: {left}"


def _run(env, tmp_path, *flags):
    argv = [sys.executable, "-m", "xtp_ray.cli", "run", "--model", "tiny:LlamaForCausalLM:2", "--tasks", "xnli",
            "--langs", "sw", "--limit", "2", "--cells", "0:1", "--no-aggregate", "--output", str(tmp_path / "out"),
            *flags]
    start = time.time()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    return done, time.time() - start


def test_a_cpu_pool_scales_a_gpu_typed_node_from_zero_and_completes(autoscaling, tmp_path):
    done, _ = _run(autoscaling, tmp_path, "--num-gpus-per-actor", "0", "--pool-start-timeout-s", "300")
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((tmp_path / "out" / "default" / "candidates").glob("*.parquet"))) == 1


def test_a_request_no_node_type_can_hold_is_refused_within_a_minute(autoscaling, tmp_path):
    # the GPU node type has 1 CPU: {CPU 2, GPU 1} fits no node type. The node types are read from the
    # autoscaling config the head's v1 monitor was given (as `ray up` gives it ~/ray_bootstrap_config.yaml),
    # so the refusal comes at once, long before the 30-minute pool bound
    done, seconds = _run(autoscaling, tmp_path, "--num-cpus-per-actor", "2", "--num-gpus-per-actor", "1",
                         "--pool-start-timeout-s", "1800")
    assert done.returncode == 2, done.stderr[-3000:]
    [line] = [line for line in done.stderr.splitlines() if line.startswith("xtp run: error:")]
    assert "no node can hold one actor {CPU: 2, GPU: 1}" in line, line
    assert "the autoscaler's node types gpu_node {CPU: 1, GPU: 1}" in line, line
    assert seconds < 60, seconds  # starting Ray's driver and planning included
    lease = tmp_path / "out" / "default" / "lease.json"
    assert not lease.exists()  # given back: a rerun needs no --take-over


def test_the_monitor_is_found_by_its_command_line_and_this_clusters_address(tmp_path):
    from xtp_ray.job.placement import monitor_autoscaling_config

    for pid, args in (("7", ["python", "/x/ray/autoscaler/_private/monitor.py", "--gcs-address=10.0.0.1:6379",
                             "--autoscaling-config=/home/ray/ray_bootstrap_config.yaml"]),
                      ("8", ["python", "monitor.py", "--gcs-address=10.0.0.2:6379", "--autoscaling-config", "/b.yaml"]),
                      ("9", ["python", "other.py", "--gcs-address=10.0.0.3:6379", "--autoscaling-config=/c.yaml"])):
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "cmdline").write_bytes(b"\0".join(a.encode() for a in args) + b"\0")
    assert monitor_autoscaling_config("10.0.0.1:6379", str(tmp_path)) == "/home/ray/ray_bootstrap_config.yaml"
    assert monitor_autoscaling_config("10.0.0.2:6379", str(tmp_path)) == "/b.yaml"
    assert monitor_autoscaling_config("10.0.0.3:6379", str(tmp_path)) is None  # not a monitor
    assert monitor_autoscaling_config("10.0.0.4:6379", str(tmp_path)) is None  # another cluster's


def test_an_actor_given_a_gpu_without_cuda_fails_loudly(autoscaling, tmp_path):
    done, _ = _run(autoscaling, tmp_path, "--num-gpus-per-actor", "1", "--pool-start-timeout-s", "300")
    assert done.returncode != 0
    [line] = [line for line in done.stderr.splitlines() if line.startswith("xtp run: error:")]
    assert "holds 1 GPU(s)" in line and "CUDA is not usable" in line, line

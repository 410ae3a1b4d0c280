"""A real two-node Ray cluster on this machine: `ray start --head` + `ray start --address`, the worker
node in its own mount namespace with a private directory at the output path (a stand-in for another
host's disk). A local output is refused before any work; `s3://` output (moto) runs on both nodes; a
worker node killed mid-run loses and duplicates nothing. Needs root (namespaces): skipped otherwise.
Processes are stopped by PID (never `ray stop`)."""
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from support import free_port, ray_start, s3_environment, stop_session

RAY = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
pytestmark = pytest.mark.skipif(RAY is None or os.geteuid() != 0 or shutil.which("unshare") is None,
                                reason="needs the ray CLI, root and unshare")
# a tmpfs of its own inside the worker's namespace; unique per run (PIDs repeat across PID namespaces)
PRIVATE = Path("/tmp") / f"xtp-private-{uuid.uuid4().hex[:12]}"
COMMON = ["--num-cpus=1", "--object-store-memory=150000000", "--disable-usage-stats"]


def _mount_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


class TwoNodes:
    def __init__(self):
        self.port = free_port()
        self.temp = Path("/tmp") / f"xtp-c{os.getpid()}"
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
        started, self.session = ray_start(["--head", "--node-ip-address=127.0.0.1", f"--port={self.port}",
                                           "--include-dashboard=false", f"--temp-dir={self.temp}", *COMMON], env)
        assert started.returncode == 0, started.stderr[-2000:]
        PRIVATE.mkdir(exist_ok=True)
        script = (f"mount -t tmpfs tmpfs {PRIVATE} && exec {RAY} start --address=127.0.0.1:{self.port} "
                  f"--node-ip-address=127.0.0.1 {' '.join(COMMON)} --block")
        self.worker = subprocess.Popen(["unshare", "--mount", "sh", "-c", script], env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.namespace = None
        deadline = time.time() + 120
        while time.time() < deadline and self.alive_nodes() < 2:
            time.sleep(1)
        assert self.alive_nodes() == 2, "the worker node did not join"
        self.namespace = _mount_namespace(self.worker.pid)

    def alive_nodes(self) -> int:
        code = "import ray; ray.init(address='auto', log_to_driver=False); print(sum(n['Alive'] for n in ray.nodes()))"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "RAY_ADDRESS": f"127.0.0.1:{self.port}"})
        return int(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else 0

    def kill_worker_node(self) -> list[int]:
        """SIGKILL every process of the worker node (all of its mount namespace): a host lost."""
        killed = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _mount_namespace(int(entry.name)) == self.namespace:
                try:
                    os.kill(int(entry.name), signal.SIGKILL)
                    killed.append(int(entry.name))
                except ProcessLookupError:
                    pass
        return killed

    def stop(self):
        self.kill_worker_node()
        self.worker.wait(timeout=30)
        left = stop_session(self.session) + stop_session(self.worker.pid)  # both sessions, by PID
        shutil.rmtree(self.temp, ignore_errors=True)
        shutil.rmtree(PRIVATE, ignore_errors=True)
        assert not left, f"processes of the test's cluster outlived it: {left}"


@pytest.fixture(scope="module")
def cluster():
    import secrets

    # Ray's token authentication with a token made for this cluster (a host's ~/.ray/auth_token turns it
    # on for `ray start --head` anyway); every node and driver below inherits it
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    saved = {k: os.environ.get(k) for k in auth}
    os.environ.update(auth)
    try:
        with s3_environment("xtp-cluster-secret-9Hq2", "xtp") as server:  # before the nodes: they inherit it
            nodes = TwoNodes()
            try:
                yield nodes, server
            finally:
                nodes.stop()
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _run(cluster, *flags, timeout=420):
    nodes, _ = cluster
    argv = [sys.executable, "-m", "xtp_ray.cli", "run", "--model", "tiny:LlamaForCausalLM:2", "--tasks", "xnli",
            "--cells", "0:1,1:0", "--min-actors", "2", "--max-actors", "2", "--no-aggregate", *flags]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "RAY_ADDRESS": f"127.0.0.1:{nodes.port}", "HF_HUB_OFFLINE": "1"})


def test_a_local_output_another_node_cannot_see_is_refused_before_any_work(cluster):
    start = time.time()
    done = _run(cluster, "--langs", "sw", "--limit", "2", "--output", str(PRIVATE / "out"), "--run-id", "local")
    assert done.returncode == 2, done.stderr[-3000:]
    [line] = [line for line in done.stderr.splitlines() if line.startswith("xtp run: error:")]
    assert "is local to this host: node(s) 127.0.0.1" in line and "s3://" in line, line
    assert not list((PRIVATE / "out" / "local").glob("candidates/*.parquet"))  # no shard was run
    assert time.time() - start < 120


def test_a_local_model_another_node_cannot_see_is_refused(cluster, tiny_model_dir):
    model = PRIVATE / "model"  # on this host only: the worker node has its own empty tmpfs here
    shutil.copytree(tiny_model_dir, model)
    before = sorted(p.name for p in model.iterdir())
    done = _run(cluster, "--model", str(model), "--langs", "sw", "--limit", "1", "--output", "s3://xtp/runs",
                "--run-id", "local-model")
    assert done.returncode == 2, done.stderr[-3000:]
    [line] = [line for line in done.stderr.splitlines() if line.startswith("xtp run: error:")]
    assert f"model {model} is local to this host: node(s) 127.0.0.1" in line, line
    assert sorted(p.name for p in model.iterdir()) == before  # nothing left beside the weights


def _rows(prefix: str) -> list[dict]:
    import pyarrow.parquet as pq

    from xtp_ray import storage

    directory = f"{prefix}/candidates"
    fs, path = storage.resolve(directory)
    return [row for name in storage.list_names(directory) if name.endswith(".parquet")
            for row in pq.read_table(f"{path}/{name}", filesystem=fs,
                                     columns=["instance_id", "module", "source_layer"]).to_pylist()]


def test_s3_output_runs_on_both_nodes_and_a_killed_node_loses_nothing(cluster):
    from xtp_ray import storage

    nodes, _ = cluster
    done = _run(cluster, "--langs", "sw,de", "--limit", "2", "--output", "s3://xtp/runs", "--run-id", "both")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _rows("s3://xtp/runs/both")
    assert len(rows) == len({tuple(r.values()) for r in rows}) == 4 * 3  # 4 instances x (vanilla + 2 cells)

    # a worker node lost mid-run: Ray restarts its actor on the head, the shard it held is run again
    argv = [sys.executable, "-m", "xtp_ray.cli", "run", "--model", "tiny:LlamaForCausalLM:2", "--tasks", "xnli",
            "--langs", "sw,de,zh", "--limit", "8", "--shard-size", "1", "--cells", "0:1,1:0", "--min-actors", "2",
            "--max-actors", "2", "--no-aggregate", "--output", "s3://xtp/runs", "--run-id", "killed"]
    job = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "RAY_ADDRESS": f"127.0.0.1:{nodes.port}", "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 300
    while time.time() < deadline and job.poll() is None and len(
            [n for n in storage.list_names("s3://xtp/runs/killed/candidates") if n.endswith(".parquet")]) < 2:
        time.sleep(0.3)
    assert job.poll() is None, "the job ended before the node could be killed"
    assert nodes.kill_worker_node(), "no worker-node process found to kill"
    _, err = job.communicate(timeout=420)
    assert job.returncode == 0, err[-3000:]
    rows = _rows("s3://xtp/runs/killed")
    assert len(rows) == len({tuple(r.values()) for r in rows}) == 24 * 3

"""Shared test support: servers and processes (127.0.0.1 only), runs and their candidates."""
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """moto's S3-compatible server on 127.0.0.1; pause() makes it unresponsive, keeping its data."""

    def __init__(self):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("moto server did not start")

    def pause(self):
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self):
        self.resume()
        self.proc.kill()
        self.proc.wait()


def aws_env(endpoint: str, secret: str) -> dict:
    return {"AWS_ACCESS_KEY_ID": "xtp-test-key", "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": "us-east-1", "XTP_S3_ENDPOINT": endpoint}


@contextmanager
def s3_environment(secret: str, bucket: str):
    """A moto S3 server with one bucket, its endpoint and credentials in os.environ (restored after).

    Set before ray.init, so Ray's workers see them too.
    """
    import boto3

    server = S3Server()
    env = aws_env(server.endpoint, secret)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        boto3.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket=bucket)
        yield server
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def session_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[3])
    except (OSError, ValueError, IndexError):
        return None


def pids_in_session(sid: int) -> list[int]:
    """Live processes of a session (a `ray start` run with start_new_session=True: every daemon it starts,
    gcs, raylet, dashboard agents, client server, workers, stays in it)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid() and session_of(int(entry.name)) == sid:
            try:
                if (entry / "cmdline").read_bytes():  # a zombie has none: it is gone, only unreaped
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def ray_start(args: list[str], env: dict, timeout: float = 180) -> tuple[subprocess.CompletedProcess, int]:
    """`ray start ARGS` in a session of its own: (its result, the session id to stop it by)."""
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    proc = subprocess.Popen([ray, "start", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), proc.pid


def stop_session(sid: int, grace_s: float = 10.0) -> list[int]:
    """End what a test started, by PID: SIGTERM every process of the session, SIGKILL what is left after
    `grace_s`; the PIDs still alive after that (none, normally). Unlike `ray stop`, which ends Ray
    processes by name on the whole host, this touches nothing the test did not start."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for pid in pids_in_session(sid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.time() + wait
        while pids_in_session(sid) and time.time() < deadline:
            time.sleep(0.2)
    return pids_in_session(sid)


def grid_search_actor_pids() -> list[int]:
    """PIDs of live GridSearch actor processes (Ray titles them ray::MapWorker(...GridSearch...))."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "ray::" in cmdline and "GridSearch" in cmdline:
            pids.append(int(entry.name))
    return pids


def make_config(tmp_path, **values):
    """A validated RunConfig writing under tmp_path."""
    from xtp_ray.job.config import RunConfig, validate

    config = RunConfig(**{"output": str(tmp_path / "out"), **values})
    validate(config)
    return config


def candidate_rows(config) -> list[dict]:
    """Every row of a local run's committed candidate shards."""
    import pyarrow.parquet as pq

    directory = Path(config.output) / config.run_id / "candidates"
    return [row for f in sorted(directory.glob("*.parquet")) for row in pq.read_table(f).to_pylist()]

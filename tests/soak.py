"""Soak: a multi-minute job while actors are killed and the object store stops answering at random.

Not a test (pytest does not collect it); run it inside a loopback-only namespace:

    .ci/loopback .venv/bin/python tests/soak.py [--limit 30] [--seed 0]

It starts moto's S3 server on 127.0.0.1, runs the grid search with 2 actors writing to
s3://soak/runs (an 8-layer tiny Llama, XNLI + XCOPA in every sample language, 20 new
tokens: several minutes here), and for as long as the job runs, at random moments,
SIGKILLs a GridSearch actor or pauses the S3 server (SIGSTOP) for a few seconds.
If the job itself fails (a fault it could not
ride out), it is rerun with the same run id, as a nightly pipeline would. At the end it
counts candidates per (instance, cell): zero lost, zero duplicated, or it exits 1.
"""
import argparse
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from support import S3Server, aws_env, grid_search_actor_pids  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=30, help="instances per (task, lang)")
    args = parser.parse_args()
    rng = random.Random(args.seed)

    server = S3Server()
    os.environ.update(aws_env(server.endpoint, "soak-secret-not-real"))
    os.environ["XTP_S3_TIMEOUT"] = "2"
    import boto3
    import pyarrow.dataset as pads
    import ray

    from xtp_ray import storage
    from xtp_ray.job.config import RunConfig, validate
    from xtp_ray.job.plan import plan
    from xtp_ray.job.run import run_job

    boto3.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket="soak")
    config = RunConfig(model="tiny:LlamaForCausalLM:8", tasks=["xnli", "xcopa"], langs=["all"],
                       limit=args.limit, shard_size=10, output="s3://soak/runs", run_id="soak", scoring="generate",
                       max_new_tokens=20, batch_size=5, min_actors=2, max_actors=2, write_retries=8)
    validate(config)
    shards = plan(config).shards
    expected_instances = sum(len(v) for v in shards.values())
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

    faults = Counter()
    stop = threading.Event()

    def inject():
        while not stop.is_set():
            time.sleep(rng.uniform(5, 20))
            if stop.is_set():
                break
            if rng.random() < 0.5:
                pids = grid_search_actor_pids()
                if pids:
                    os.kill(rng.choice(pids), signal.SIGKILL)
                    faults["actor killed"] += 1
            else:
                pause = rng.uniform(1, 6)
                server.pause()
                time.sleep(pause)
                server.resume()
                faults["object store paused"] += 1
                faults["seconds paused"] += round(pause)

    injector = threading.Thread(target=inject, daemon=True)
    injector.start()
    attempts = 0
    started = time.time()
    while True:
        attempts += 1
        try:
            run_job(config)
            break
        except Exception as exc:  # a fault the job could not ride out: rerun, as a nightly would
            faults["job reruns"] += 1
            print(f"attempt {attempts} failed: {str(exc)[:200]}", flush=True)
            if attempts > 20:
                raise
    stop.set()
    injector.join(timeout=30)
    server.resume()

    fs, path = storage.resolve("s3://soak/runs/soak/candidates")
    table = pads.dataset(path, filesystem=fs, format="parquet").to_table(
        columns=["instance_id", "source_layer", "target_layer"])
    keys = Counter(zip(*(table.column(c).to_pylist() for c in table.column_names)))
    expected = expected_instances * (8 * 8 + 1)
    lost = expected - len(keys)
    duplicated = sum(n - 1 for n in keys.values())
    print(f"soak: {time.time() - started:.0f} s, {attempts} job attempt(s), faults injected: {dict(faults)}")
    print(f"soak: candidates expected {expected}, found {sum(keys.values())}, lost {lost}, duplicated {duplicated}")
    ray.shutdown()
    server.stop()
    return 0 if lost == 0 and duplicated == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

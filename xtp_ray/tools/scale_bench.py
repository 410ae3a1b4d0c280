"""The results benchmark: a realistic nightly run of synthetic shards, aggregated three ways side by side.

`xtp bench --suite results [--rows 20000000] [--dir D]` writes (once; reused if present) XNLI-like
shards through the job's own commit (`shards.write_shard`, partials in each footer): 15 languages, a
32-layer full grid (1,025 rows per instance), 64 instances per shard. Then, each in its own process
(wall time and peak RSS from `wait4`): `xtp aggregate` (partials from the footers), `xtp aggregate
--from-candidates` (every shard's rows, streamed) and, unless --no-before, the pandas definition over
every row (`rows.read_rows` + `rows.aggregate_frame`, what `xtp aggregate` did before partials).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zlib

LANGS = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh")
LAYERS = 32
PER_SHARD = 64
RUN_ID = "scale"


def generate(directory: str, rows: int) -> int:
    """Shards for about `rows` candidate rows under <directory>/scale (kept if already there)."""
    from ..job.config import RunConfig
    from ..job.shards import committed_shards, write_shard
    from ..results.synthetic import synthetic_shard

    per_instance = LAYERS * LAYERS + 1
    per_lang = max(1, rows // per_instance // len(LANGS))
    config = RunConfig(output=directory, run_id=RUN_ID, write_retries=1)
    planned = {f"xnli-sample-{lang}-{k // PER_SHARD:05d}": (lang, k) for lang in LANGS
               for k in range(0, per_lang, PER_SHARD)}
    done = committed_shards(config)
    digest = json.dumps({"digest": config.digest()})
    start = time.perf_counter()
    for n, (name, (lang, k)) in enumerate(sorted(planned.items())):
        if name in done:
            continue
        table = synthetic_shard("xnli", "sample", lang, range(k, min(k + PER_SHARD, per_lang)), LAYERS,
                                seed=zlib.crc32(name.encode()), run_id=RUN_ID, config=digest)
        write_shard(config, name, table, [])
        if n % 50 == 0:
            print(f"  generated {n + 1}/{len(planned)} shards ({time.perf_counter() - start:.0f} s)", flush=True)
    with open(os.path.join(directory, RUN_ID, "manifest.json"), "w") as handle:
        json.dump({"run_id": RUN_ID, "shards": sorted(planned), "attempts": [{"started": 0.0}]}, handle)
    return per_lang * len(LANGS) * per_instance


BEFORE = """
import sys
from xtp_ray.results.report import render_figures, render_html, render_markdown
from xtp_ray.results.rows import aggregate_frame, read_rows
report = {"run_id": "scale", **aggregate_frame(read_rows(sys.argv[1]))}
figures = render_figures(report)  # the same report work as `xtp aggregate`, so the paths compare
report["figures"] = sorted(figures)
render_markdown(report), render_html(report, figures)
"""


def measure(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS GiB) of a command in its own process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(argv[:4])}... failed: {proc.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def run_scale_bench(directory: str, rows: int, before: bool = True) -> dict:
    print(f"results benchmark: ~{rows:,} rows under {directory}/{RUN_ID}")
    total = generate(directory, rows)
    cli = [sys.executable, "-m", "xtp_ray.cli", "aggregate", "--output", directory, "--run-id", RUN_ID]
    results = {"rows": total, "shards": None}
    paths = {"partials": cli, "from_candidates": cli + ["--from-candidates"]}
    if before:
        paths["before (pandas over every row)"] = [sys.executable, "-c", BEFORE, os.path.join(directory, RUN_ID)]
    for name, argv in paths.items():
        seconds, peak = measure(argv)
        results[name] = {"seconds": round(seconds, 1), "peak_rss_gib": round(peak, 2)}
        print(f"{name:<32} {seconds:7.1f} s   peak RSS {peak:5.2f} GiB", flush=True)
    report = json.load(open(os.path.join(directory, RUN_ID, "report", "report.json")))
    results["shards"] = report["shards"]["committed"]
    print(f"{total:,} rows in {results['shards']} shards; "
          + ", ".join(f"{k}: {v['seconds']} s / {v['peak_rss_gib']} GiB" for k, v in results.items()
                      if isinstance(v, dict)))
    return results

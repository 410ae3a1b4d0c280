"""`report/results.json` in lm-evaluation-harness's results shape, for dashboards and loggers that read it.

One lm-eval "task" per (task, split, module, language): `xtp_<task>_<split>_<module>_<lang>`, with
- `results[name]`: `acc,none` (vanilla accuracy) and `acc_stderr,none`, `acc_best_cell,none` (the
  best (source, target) layer pair) and its stderr, `upper_bound,none` (instance-aware: any searched
  cell right); and per task metric, under lm-eval's name where it has one (`exact_match`, `f1`; else
  ours: `js_similarity`, 1 - Jensen-Shannon distance), `<metric>,none` (vanilla),
  `<metric>_best_cell,none` (at the cell with the highest mean of that metric) and
  `<metric>_upper_bound,none` (per instance the max over the searched cells, averaged over instances);
  stderrs as lm-eval computes a mean's: the sample standard deviation over sqrt(n);
- `configs[name]`: the task, split, module, language, best cell and each metric's best cell;
  `versions[name]`: the package version;
- `n-samples[name]`: `original` and `effective` instance counts;
- `config` (model, engine, dtype, cells, run id), `git_hash` (of the package's checkout, where known), `date`.
"""
from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path

from .. import __version__


def stderr_of_mean(p: float, n: int) -> float | None:
    """Sample std / sqrt(n) of n 0/1 outcomes with mean p (lm-eval's `mean_stderr`)."""
    if n < 2:
        return None
    return math.sqrt(p * (1 - p) * n / (n - 1)) / math.sqrt(n)


def git_hash() -> str | None:
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


# a metric's name in results.json: lm-eval's (its squad / mkqa-style tasks report `exact_match` and `f1`)
LM_EVAL_NAMES = {"em": "exact_match", "f1": "f1", "js_similarity": "js_similarity"}


def results_json(report: dict, run_config: dict | None = None) -> dict:
    results, configs, versions, samples = {}, {}, {}, {}
    for key, table in report["tables"].items():
        task, split, module = key.split("/")
        for lang, g in table["by_lang"].items():
            name = f"xtp_{task}_{split}_{module}_{lang}"
            n = g["instances"]
            entry = {"alias": f"{key} {lang}", "acc,none": g["vanilla_accuracy"],
                     "acc_stderr,none": stderr_of_mean(g["vanilla_accuracy"], n)}
            if "best_cell" in g:
                best = g["best_cell"]["accuracy"]
                entry.update({"acc_best_cell,none": best, "acc_best_cell_stderr,none": stderr_of_mean(best, n),
                              "upper_bound,none": g["upper_bound"]})
            for metric, value in (g.get("vanilla_metrics") or {}).items():
                entry[f"{LM_EVAL_NAMES.get(metric, metric)},none"] = value
            for metric, best in (g.get("best_cell_metrics") or {}).items():
                entry[f"{LM_EVAL_NAMES.get(metric, metric)}_best_cell,none"] = best["value"]
                entry[f"{LM_EVAL_NAMES.get(metric, metric)}_upper_bound,none"] = g["upper_bound_metrics"][metric]
            results[name] = entry
            configs[name] = {"task": task, "split": split, "module": module, "lang": lang,
                             "best_cell": g.get("best_cell"), "num_layers": g.get("num_layers"),
                             "best_cell_metrics": g.get("best_cell_metrics") or {}}
            versions[name] = __version__
            samples[name] = {"original": n, "effective": n}
    config = {key: (run_config or {}).get(key) for key in ("model", "engine", "dtype", "cells", "scoring",
                                                            "max_new_tokens")}
    config["run_id"] = report.get("run_id")
    return {"results": results, "configs": configs, "versions": versions, "n-samples": samples,
            "config": config, "git_hash": git_hash(), "date": time.time(), "xtp_ray_version": __version__}

"""Synthetic candidate shards in the job's exact schema (`candidates.CANDIDATE_SCHEMA`), for the
aggregation tests and the results benchmark: realistic sizes (a full grid is layers^2 + 1 rows per
instance), realistic columns (token ids, predictions, option log-probs, metrics JSON), and answers
that depend on the cell, so that aggregates have structure to get wrong."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from ..candidates import CANDIDATE_SCHEMA


def synthetic_shard(task: str, split: str, lang: str, instances: range, layers: int, modules=("ffn",),
                    cells: list[tuple[int, int]] | None = None, seed: int = 0, run_id: str = "synthetic",
                    config: str = '{"digest": "synthetic"}', group_size: int | None = None) -> pa.Table:
    """Rows of `instances` (indices) of one (task, split, lang): vanilla + `cells` (default: the full
    grid) per module; group_size: instances k // group_size are scored together (CulturalBench's four)."""
    rng = np.random.default_rng(seed)
    if cells is None:
        cells = [(i, j) for i in range(layers) for j in range(layers)]
    grid = np.array(cells, dtype=np.int32).reshape(-1, 2)
    per_instance = len(grid) + 1
    n = len(instances) * len(modules) * per_instance
    ids = np.repeat([f"{task}/{split}/{lang}/{k}" for k in instances], per_instance).tolist() * len(modules)
    source = np.tile(np.concatenate([[-1], grid[:, 0]]), len(instances) * len(modules))
    target = np.tile(np.concatenate([[-1], grid[:, 1]]), len(instances) * len(modules))
    vanilla = source < 0
    # easy instances and helpful cells: P(correct) rises with the instance's ease and near the diagonal
    ease = np.repeat(rng.random(len(instances) * len(modules)), per_instance)
    helpful = np.where(vanilla, 0.0, 0.3 * np.exp(-np.abs(source - target) / 4.0))
    correct = rng.random(n) < np.clip(0.2 + 0.5 * ease + helpful, 0, 1)
    from ..tasks import get
    from ..tasks import names as task_names

    known = get(task) if task in task_names() else None  # the task's own metrics and answers
    names = known.metrics if known else ()
    metrics = [json.dumps({m: float(round(rng.random(), 6)) for m in names}) if names else "{}" for _ in range(n)]
    options = [None] * n if known and known.open_answer else [list(rng.normal(size=3).round(4)) for _ in range(n)]
    table = {
        "run_id": [run_id] * n, "model": ["synthetic"] * n, "model_revision": ["synthetic"] * n,
        "dtype": ["bfloat16"] * n, "task": [task] * n, "split": [split] * n, "lang": [lang] * n,
        "instance_id": ids, "direction": [f"en->{lang}"] * n,
        "module": np.repeat(list(modules), len(instances) * per_instance).tolist(),
        "source_layer": pa.array(np.where(vanilla, 0, source), mask=vanilla, type=pa.int32()),
        "target_layer": pa.array(np.where(vanilla, 0, target), mask=vanilla, type=pa.int32()),
        "prediction": ["Entail"] * n, "token_ids": [[17, 42, 9]] * n, "correct": correct,
        "score": correct.astype(float), "option_logprobs": options, "metrics": metrics,
        "num_layers": np.full(n, layers, dtype=np.int32), "config": [config] * n,
        "group": (np.repeat([str(k // group_size) for k in instances], per_instance).tolist() * len(modules)
                  if group_size else [None] * n),
    }
    return pa.table(table, schema=CANDIDATE_SCHEMA)

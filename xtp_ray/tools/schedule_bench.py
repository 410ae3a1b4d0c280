"""`xtp bench --suite schedule`: how long a night's shards keep a pool busy, today's plan against the
plan by cost, side by side, with the cost model (`job/cost.py`).

For each job config (jobs/paper.yaml, jobs/llama70b.yaml) and pool size (8, 32, 128 actors),
the instances the config names are planned both ways and dispatched in the plan's order, each
shard to the actor free first (`schedule.makespan`); the ratio is makespan / lower bound, the
lower bound max(total / actors, the costliest instance). The model's shape comes from a
config-only directory (tests/data/models, copies of ../shared/models/configs); the data from
--data-root (default ../shared/data where it is, else the bundled sample splits).
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # a checkout: jobs/ and tests/data/ beside xtp_ray/
CONFIGS = ("paper.yaml", "llama70b.yaml")
ACTORS = (8, 32, 128)
GOAL = 1.10


def default_data_root() -> str | None:
    shared = ROOT.parent / "shared" / "data"
    return str(shared) if shared.is_dir() else None


def model_dir(model: str) -> str:
    """The config-only directory of a job config's model (its last path part)."""
    path = ROOT / "tests" / "data" / "models" / Path(model).name
    if not (path / "config.json").exists():
        raise ValueError(f"no config-only directory for {model} in {path.parent}")
    return str(path)


def simulate(config_name: str, actors: tuple[int, ...] = ACTORS, data_root: str | None = None) -> list[dict]:
    """One row per pool size: makespan / lower bound today and by cost, and the shards of each."""
    from ..job.config import load_config
    from ..job.plan import load_slices, model_shape, plan
    from ..job.schedule import lower_bound, makespan

    config = load_config(path=str(ROOT / "jobs" / config_name))
    config = config.replace(model=model_dir(config.model), data_root=data_root)
    splits = [s for s in config.splits if data_root or s in ("sample", "unseen")]
    config = config.replace(splits=splits)
    shape = model_shape(config)
    loaded = load_slices(config)
    rows = []
    for n in actors:
        today = plan(config.replace(max_actors=n, sharding="size"), shape, loaded)
        by_cost = plan(config.replace(max_actors=n, sharding="cost"), shape, loaded)
        bound = lower_bound(by_cost.instance_costs, n)
        rows.append({"config": config_name, "actors": n, "instances": len(by_cost.instance_costs),
                     "lower_bound_s": bound,
                     "today": makespan(list(today.costs.values()), n) / bound, "today_shards": len(today.shards),
                     "by_cost": makespan(list(by_cost.costs.values()), n) / bound,
                     "by_cost_shards": len(by_cost.shards)})
    return rows


def run_schedule_bench(data_root: str | None = None, actors: tuple[int, ...] = ACTORS) -> list[dict]:
    """Print one line per (config, pool size); returns the rows."""
    data_root = data_root or default_data_root()
    print(f"data: {data_root or 'the bundled sample splits'}; cost model: job/cost.py; goal: makespan/lower bound "
          f"<= {GOAL:.2f}")
    rows = []
    for name in CONFIGS:
        for row in simulate(name, actors, data_root):
            rows.append(row)
            print(f"schedule: {name} on {row['actors']} actors: makespan/lower bound {row['by_cost']:.3f} "
                  f"(today's order {row['today']:.3f}); {row['by_cost_shards']} shards (today {row['today_shards']}), "
                  f"{row['instances']} instances, lower bound {row['lower_bound_s']:.0f} s")
    worst = max(r["by_cost"] for r in rows)
    print(f"schedule: worst {worst:.3f} ({'within' if worst <= GOAL else 'above'} the goal of {GOAL:.2f})")
    return rows


def shard_costs_measured(manifest_uri: str) -> list[str]:
    """How a run's shards really differed: per task, measured seconds per instance against the cost
    model's prediction, each relative to the run's mean (from the manifest's per-shard timings)."""
    import json

    from .. import storage

    manifest = json.loads(storage.read_text(manifest_uri))
    attempt = manifest["attempts"][-1]
    plan = manifest["plan"]
    per_task = {}
    for t in attempt["shards"]:
        task = t["shard"].split("-")[0]
        row = per_task.setdefault(task, [0, 0.0, 0.0])
        row[0] += len(plan[t["shard"]])
        row[1] += t["end"] - t["start"]
        row[2] += t["predicted_s"] or 0.0
    count = sum(r[0] for r in per_task.values())
    measured_mean = sum(r[1] for r in per_task.values()) / count
    predicted_mean = sum(r[2] for r in per_task.values()) / count
    lines = [f"shards: {manifest_uri}: {len(attempt['shards'])} shards, {count} instances, busy share "
             f"{attempt.get('busy_share') or 0:.3f}, {attempt['seconds']:.1f} s"]
    for task, (n, measured, predicted) in sorted(per_task.items()):
        lines.append(f"shards: {task}: {n} instances, measured {measured / n / measured_mean:.2f}x the mean "
                     "s/instance, "
                     f"predicted {predicted / n / predicted_mean:.2f}x")
    return lines

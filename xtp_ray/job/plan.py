"""A run's plan: its instances loaded (the rows left out recorded as `results.leftout` records), cut into
shards (one task/split/lang each, named deterministically), and on a resume the plan the run was made with.

A slice is one (task, split, lang) and its instances; a group is the instances scored together (a
CulturalBench question's), which a limit or a shard takes whole."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from ..tasks import RELEASE_SPLITS, Instance, InstanceError, check_root, list_languages, load_instances, task_splits
from .checks import read_model_config
from .config import TINY_PREFIX, RunConfig, tiny_spec

log = logging.getLogger("xtp_ray")


@dataclass
class Plan:
    """A run's shards in dispatch order, with what they are predicted to cost."""
    shards: dict[str, list[Instance]]  # name -> instances, in the order the pool gets them
    costs: dict[str, float]  # name -> predicted actor-seconds (as on one `cost.CALIBRATION` GPU)
    instance_costs: list[float]  # every instance's, for the schedule's lower bound
    slices: dict[tuple[str, str, str], list[Instance]]  # (task, split, lang) -> instances
    errors: list[str]  # the lines of the rows and files left out as bad data (notes not included)
    shapes: dict  # task -> `cost.Shape`: what its instances' costs were predicted from
    left_out: list[dict]  # every row and file left out while loading, notes included (`results.leftout` records)


def load_slices(config: RunConfig) -> tuple[dict[tuple[str, str, str], list[Instance]], list[dict]]:
    """(task, split, lang) -> its instances (after `limit`), and what was left out: one `results.leftout`
    record per row or file (notes, a task's own rule, included), naming its task, split and language."""
    from ..results.leftout import from_instance_error, record

    slices: dict[tuple[str, str, str], list[Instance]] = {}
    left_out: list[dict] = []
    if config.data_root:
        check_root(config.data_root)
    for split in config.splits:  # a split no task has is a mistake; one some tasks lack is theirs to skip
        if not any(split in task_splits(task) for task in config.tasks):
            task = config.tasks[0]
            raise ValueError(f"unknown split {split!r} for {task}; splits: {', '.join(task_splits(task))}")
    for task in config.tasks:
        for split in config.splits:
            if split not in task_splits(task):
                log.info("%s has no split %s: skipped for it", task, split)
                continue
            if not config.data_root and split not in RELEASE_SPLITS:
                raise ValueError(f"the bundled samples have no {split} split (they hold the release's "
                                 f"{' and '.join(RELEASE_SPLITS)} splits): point --data-root at the original "
                                 f"{task} data for {split}")
            errors: list[InstanceError] = []
            available = list_languages(task, split, config.data_root, errors)
            left_out += [from_instance_error(e, task, split, None) for e in errors]
            unknown = [lang for lang in config.langs if lang != "all" and lang not in available]
            if unknown:
                raise ValueError(f"unknown language(s) {', '.join(unknown)} for {task} {split} in "
                                 f"{config.data_root or 'the bundled samples'}; languages: "
                                 f"{', '.join(available) or 'none found'}")
            langs = available if config.langs == ["all"] else config.langs
            if not available and not errors:  # asked for, and nothing there: say so
                where = config.data_root or "the bundled samples"
                left_out.append(record("missing", f"{task} {split}: no data in {where} (no language found): left "
                                       "out whole", task=task, split=split, rows=None))
            for lang in langs:
                instances, row_errors = load_instances(task, lang, split, config.data_root)
                left_out += [from_instance_error(e, task, split, lang) for e in row_errors]
                for note in (e for e in row_errors if e.note):  # a task's own rule: counted, no error
                    log.info("note: %s", note)
                if not instances and not row_errors:  # nothing to say why: say that nothing was there
                    left_out.append(record("empty", f"{task} {split} {lang}: no instances in "
                                           f"{config.data_root or 'the bundled samples'}", task=task, split=split,
                                           lang=lang, rows=None))
                instances = limited(instances, config.limit)
                if instances:
                    slices[(task, split, lang)] = instances
    if not slices:
        raise ValueError(f"empty dataset: no instances for tasks {config.tasks}, languages {config.langs}, "
                         f"splits {config.splits} in {config.data_root or 'the bundled samples'}")
    return slices, left_out


def limited(instances: list[Instance], limit: int | None) -> list[Instance]:
    """The first `limit` instances, and the rest of the group the last one belongs to (a group of
    instances scored together is taken whole or not at all)."""
    if not limit or limit >= len(instances):
        return instances
    end = limit
    group = instances[end - 1].extra.get("group")
    while group is not None and end < len(instances) and instances[end].extra.get("group") == group:
        end += 1
    return instances[:end]


def model_shape(config: RunConfig) -> tuple[dict, int]:
    """(config.json as a dict, the parameters a token computes through) of the run's model, without weights:
    all of a dense model's, a mixture of experts' active ones (`footprint.ParameterCount.active`)."""
    from ..engine.footprint import count_parameters

    if config.model.startswith(TINY_PREFIX):
        from ..engine.tiny import tiny_config
        from .config import TINY_RUN_SHAPE

        architecture, layers = tiny_spec(config.model)
        model_config = tiny_config(architecture, 512, num_layers=layers, **TINY_RUN_SHAPE).to_dict()
    else:
        model_config = read_model_config(config)
    return model_config, count_parameters(model_config, config.trust_remote_code).active


def plan(config: RunConfig, shape: tuple[dict, int] | None = None, loaded: tuple | None = None) -> Plan:
    """Every (task, split, lang)'s instances cut into shards: by predicted cost for the pool
    (`schedule.cut_by_cost`, costliest first) or, with `sharding: size`, by instance count.
    shape: `model_shape(config)`, loaded: `load_slices(config)`, where the caller has them."""
    from .cost import Shape, instance_costs
    from .schedule import cut_by_cost, cut_by_size

    slices, left_out = loaded or load_slices(config)
    model_config, parameters = shape or model_shape(config)
    shapes = {task: Shape.of_run(config, model_config, parameters, task) for task in config.tasks}
    costs = {key: instance_costs(instances, shapes.__getitem__) for key, instances in slices.items()}
    if config.sharding == "size" or config.max_actors == 1:  # one actor: any cut takes as long
        shards, shard_costs = cut_by_size(slices, config.shard_size, costs)
    else:
        shards, shard_costs = cut_by_cost(slices, costs, config.max_actors, config.shard_size, config.batch_size)
    every = [c for key in slices for c in costs[key]]
    errors = [r["error"] for r in left_out if not r["note"]]
    return Plan(shards, shard_costs, every, slices, errors, shapes, left_out)


def digest_plan(shards: dict[str, list[Instance]]) -> str:
    """16 hex digits naming the plan (shard names and their instance ids), kept in the manifest."""
    import hashlib

    plan_ids = {name: [i.id for i in instances] for name, instances in sorted(shards.items())}
    return hashlib.sha256(json.dumps(plan_ids).encode()).hexdigest()[:16]


def resumed_plan(config: RunConfig, manifest: dict, planned: Plan) -> dict[str, list[Instance]]:
    """The shards to run: the run's own plan where its manifest holds one (a rerun keeps its shards
    whatever the pool or the sharding now, so nothing is lost or duplicated), else the fresh plan for a
    new run. A run planned before plans were kept, or over other instances, is refused in one line."""
    stored = manifest.get("plan")
    if stored is None:
        if manifest.get("plan_digest") is not None:  # xtp-ray 0.1 before plans were kept: names and a digest
            raise ValueError(f"run {config.run_id!r} in {config.output} was planned by an earlier xtp-ray, which "
                             "kept no plan to resume under; use a new run_id")
        return planned.shards
    by_id = {i.id: i for instances in planned.shards.values() for i in instances}
    ids = [i for names in stored.values() for i in names]
    if len(ids) != len(set(ids)) or set(ids) != set(by_id):
        raise ValueError(f"run {config.run_id!r} in {config.output} was planned over other instances (tasks, "
                         "langs, splits, limit or the data changed); use a new run_id")
    return {name: [by_id[i] for i in names] for name, names in stored.items()}


def scored_languages(planned: Plan, skipped: list[dict]) -> dict[tuple[str, str], set]:
    """(task, split) -> its languages with at least one instance that ran (not every one left out)."""
    lost = {}
    for entry in skipped:
        key = (entry["task"], entry["split"], entry["lang"])
        lost[key] = lost.get(key, 0) + 1
    shown: dict[tuple[str, str], set] = {}
    for (task, split, lang), instances in planned.slices.items():
        if len(instances) > lost.get((task, split, lang), 0):
            shown.setdefault((task, split), set()).add(lang)
    return shown

"""Planning a run: checks that need no weights, then the shards (one task/split/lang
each, `shard_size` instances, named deterministically) and the rows left out (`results.leftout` records)."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

from .. import storage
from ..cells import parse_cells
from ..tasks import RELEASE_SPLITS, Instance, InstanceError, check_root, list_languages, load_instances, task_splits
from .config import TINY_PREFIX, RunConfig, tensor_parallel_size, tiny_spec

log = logging.getLogger("xtp_ray")


def read_model_config(config: RunConfig) -> dict | None:
    """The model's config.json as a dict, read without weights (None for a tiny model). A config-only
    directory is enough: what needs only the shape (the memory fit, planning) runs from it."""
    if config.model.startswith(TINY_PREFIX):
        return None
    config_uri = storage.join(config.model, "config.json")
    if not config.model.startswith("s3://") and not os.path.isdir(config.model) and (
            os.path.exists(config.model) or config.model.startswith((".", "/", "~"))
            or config.model.count("/") > 1):
        what = "is a file, not a save_pretrained directory" if os.path.exists(config.model) else "does not exist"
        raise ValueError(f"model {config.model}: {what}")
    if config.model.startswith("s3://") or os.path.isdir(config.model):
        if not storage.exists(config_uri):
            raise ValueError(f"model {config.model!r} has no config.json (expected a save_pretrained directory)")
        try:
            model_config = json.loads(storage.read_text(config_uri))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{config_uri}: not a JSON model config ({exc})") from None
        return model_config
    import transformers

    return transformers.AutoConfig.from_pretrained(
        config.model, revision=config.model_revision, trust_remote_code=config.trust_remote_code).to_dict()


def preflight(config: RunConfig, tokenizer: bool = True, fit: bool = True) -> int | None:
    """Checks that need the model's config but no weights: architecture, layer indices, the TP size,
    the memory fit where the GPUs' memory is given (`gpu_memory_gb`; fit=False leaves it to the
    caller), and a model directory's tokenizer files (tokenizer=False: a config-only directory).

    Returns the number of layers where it can be known without loading weights.
    """
    from ..engine.architectures import lookup, num_layers_of_config
    from .fit import check_fit

    if config.model.startswith(TINY_PREFIX):
        _, layers = tiny_spec(config.model)
    else:
        model_config = read_model_config(config)
        lookup(model_config)
        layers = num_layers_of_config(model_config)
        if config.engine == "vllm":
            from ..engine.vllm import check_model

            check_model(model_config, tensor_parallel_size(config))
        if fit and config.gpu_memory_gb is not None:  # before the tokenizer: a config-only directory is enough
            log.info("%s", check_fit(config, model_config, config.gpu_memory_gb, "gpu_memory_gb"))
        if tokenizer and (config.model.startswith("s3://") or os.path.isdir(config.model)):
            check_tokenizer_files(config.model)
    if layers and config.cells not in ("full", "target-first", "coarse"):
        parse_cells(config.cells, layers)
    return layers


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer_config.json")


def check_tokenizer_files(model: str) -> None:
    """A model directory must carry its tokenizer; without one, transformers fails deep inside the
    actor (and suggests installing sentencepiece)."""
    names = set(storage.list_names(model))
    if not names & set(TOKENIZER_FILES):
        raise ValueError(f"model {model} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}): save "
                         "the tokenizer into the model directory (tokenizer.save_pretrained(directory))")


@dataclass
class Plan:
    """A run's shards in dispatch order, with what they are predicted to cost."""
    shards: dict[str, list[Instance]]  # name -> instances, in the order the pool gets them
    costs: dict[str, float]  # name -> predicted actor-seconds (as on one `cost.CALIBRATION` GPU)
    instance_costs: list[float]  # every instance's, for the schedule's lower bound
    groups: dict[tuple[str, str, str], list[Instance]]  # (task, split, lang) -> instances
    errors: list[str]  # the lines of the rows and files left out as bad data (notes not included)
    shapes: dict  # task -> `cost.Shape`: what its instances' costs were predicted from
    left_out: list[dict]  # every row and file left out while loading, notes included (`results.leftout` records)


def load_groups(config: RunConfig) -> tuple[dict[tuple[str, str, str], list[Instance]], list[dict]]:
    """(task, split, lang) -> its instances (after `limit`), and what was left out: one `results.leftout`
    record per row or file (notes, a task's own rule, included), naming its task, split and language."""
    from ..results.leftout import from_instance_error, record

    groups: dict[tuple[str, str, str], list[Instance]] = {}
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
                    groups[(task, split, lang)] = instances
    if not groups:
        raise ValueError(f"empty dataset: no instances for tasks {config.tasks}, languages {config.langs}, "
                         f"splits {config.splits} in {config.data_root or 'the bundled samples'}")
    return groups, left_out


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
    shape: `model_shape(config)`, loaded: `load_groups(config)`, where the caller has them."""
    from .cost import Shape, instance_costs
    from .schedule import cut_by_cost, cut_by_size

    groups, left_out = loaded or load_groups(config)
    model_config, parameters = shape or model_shape(config)
    shapes = {task: Shape.of_run(config, model_config, parameters, task) for task in config.tasks}
    costs = {key: instance_costs(instances, shapes.__getitem__) for key, instances in groups.items()}
    if config.sharding == "size" or config.max_actors == 1:  # one actor: any cut takes as long
        shards, shard_costs = cut_by_size(groups, config.shard_size, costs)
    else:
        shards, shard_costs = cut_by_cost(groups, costs, config.max_actors, config.shard_size, config.batch_size)
    every = [c for key in groups for c in costs[key]]
    errors = [r["error"] for r in left_out if not r["note"]]
    return Plan(shards, shard_costs, every, groups, errors, shapes, left_out)


def digest_plan(shards: dict[str, list[Instance]]) -> str:
    import hashlib

    plan_ids = {name: [i.id for i in instances] for name, instances in sorted(shards.items())}
    return hashlib.sha256(json.dumps(plan_ids).encode()).hexdigest()[:16]

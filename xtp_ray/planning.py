"""Planning a run: checks that need no weights, then the shards (one task/split/lang
each, `shard_size` instances, named deterministically) and the rows left out."""
from __future__ import annotations

import json
import os

from . import storage
from .cells import parse_cells
from .config import TINY_PREFIX, RunConfig, tiny_spec
from .tasks import Instance, InstanceError, list_languages, load_instances, task_splits


def preflight(config: RunConfig) -> int | None:
    """Checks that need the model's config but no weights: architecture, layer indices.

    Returns the number of layers where it can be known without loading weights.
    """
    from .architectures import lookup, num_layers_of_config

    if config.model.startswith(TINY_PREFIX):
        _, layers = tiny_spec(config.model)
    else:
        config_uri = storage.join(config.model, "config.json")
        if config.model.startswith("s3://") or os.path.isdir(config.model):
            if not storage.exists(config_uri):
                raise ValueError(f"model {config.model!r} has no config.json (expected a save_pretrained directory)")
            model_config = json.loads(storage.read_text(config_uri))
        else:
            import transformers

            model_config = transformers.AutoConfig.from_pretrained(
                config.model, revision=config.model_revision, trust_remote_code=config.trust_remote_code).to_dict()
        lookup(model_config)
        layers = num_layers_of_config(model_config)
        if config.engine == "vllm":
            from .vllm_engine import check_model

            check_model(model_config, max(1, int(config.num_gpus_per_actor)))
    if layers and config.cells not in ("full", "target-first", "coarse"):
        parse_cells(config.cells, layers)
    return layers


def plan(config: RunConfig) -> tuple[dict[str, list[Instance]], list[InstanceError]]:
    """Shard name -> instances, and the rows left out, for every (task, split, lang)."""
    shards: dict[str, list[Instance]] = {}
    errors: list[InstanceError] = []
    for task in config.tasks:
        for split in config.splits:
            known = task_splits(task)
            if split not in known:
                raise ValueError(f"unknown split {split!r} for {task}; splits: {', '.join(known)}")
            available = list_languages(task, split, config.data_root)
            unknown = [lang for lang in config.langs if lang != "all" and lang not in available]
            if unknown:
                raise ValueError(f"unknown language(s) {', '.join(unknown)} for {task} {split} in "
                                 f"{config.data_root or 'the bundled samples'}; languages: "
                                 f"{', '.join(available) or 'none found'}")
            langs = available if config.langs == ["all"] else config.langs
            for lang in langs:
                instances, row_errors = load_instances(task, lang, split, config.data_root)
                errors.extend(row_errors)
                instances = instances[:config.limit] if config.limit else instances
                for k in range(0, len(instances), config.shard_size):
                    shards[f"{task}-{split}-{lang}-{k // config.shard_size:05d}"] = instances[k:k + config.shard_size]
    if not shards:
        raise ValueError(f"empty dataset: no instances for tasks {config.tasks}, languages {config.langs}, "
                         f"splits {config.splits} in {config.data_root or 'the bundled samples'}")
    return shards, errors


def digest_plan(shards: dict[str, list[Instance]]) -> str:
    import hashlib

    plan_ids = {name: [i.id for i in instances] for name, instances in sorted(shards.items())}
    return hashlib.sha256(json.dumps(plan_ids).encode()).hexdigest()[:16]

"""Checks before any work: the model and its config (no weights), the output, and on the live cluster the
actor request's feasibility and memory fit. One check of the cluster serves the run (which refuses in one
line) and the dry run (which shows the refusal)."""
from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass

from .. import storage
from ..cells import parse_cells
from .config import TINY_PREFIX, RunConfig, tensor_parallel_size, tiny_spec
from .shards import redact, run_dir

log = logging.getLogger("xtp_ray")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer_config.json")


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
    from .memory_fit import check_fit

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


def check_tokenizer_files(model: str) -> None:
    """A model directory must carry its tokenizer; without one, transformers fails deep inside the
    actor (and suggests installing sentencepiece)."""
    names = set(storage.list_names(model))
    if not names & set(TOKENIZER_FILES):
        raise ValueError(f"model {model} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}): save "
                         "the tokenizer into the model directory (tokenizer.save_pretrained(directory))")


def absolute_output(config: RunConfig) -> RunConfig:
    """The config with a local output made absolute: every process must resolve it alike."""
    if "://" in config.output:
        return config
    if not os.path.isabs(config.output) and "runtime_resources" in os.getcwd():
        raise ValueError(f"output {config.output!r} is relative, and under `ray job submit` the working directory "
                         f"is Ray's temporary copy ({os.getcwd()}), removed with the job's runtime env: give "
                         "--output s3://bucket/prefix or an absolute path on a filesystem every node shares")
    return config.replace(output=os.path.abspath(config.output))


def check_writable(config: RunConfig) -> None:
    probe = storage.join(run_dir(config), f"_probe-{uuid.uuid4().hex}")
    try:
        storage.write_text(probe, "ok")
        fs, path = storage.resolve(probe)
        fs.delete_file(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"output {config.output!r} is not writable: {redact(str(exc))}") from None


def request_text(config: RunConfig) -> str:
    return f"{config.num_cpus_per_actor:g} CPU, {config.num_gpus_per_actor:g} GPU"


@dataclass
class ClusterCheck:
    """What the live cluster says of one actor's request."""
    feasibility: str  # how an actor can be held, or why none can (`refused`)
    refused: bool
    fit: dict | None  # the memory fit on the nodes' GPUs (`fit.assess_on_cluster`), for GPU actors without
    #                   gpu_memory_gb (given, `preflight` checks it); None otherwise


def assess_cluster(config: RunConfig, model_config: dict | None) -> ClusterCheck:
    """The request's feasibility and memory fit on the cluster Ray is connected to; nothing is refused here."""
    from .memory_fit import assess_on_cluster
    from .placement import check_feasible

    try:
        feasibility, refused = check_feasible(config.num_cpus_per_actor, config.num_gpus_per_actor), False
    except ValueError as exc:
        feasibility, refused = str(exc), True
    fit = None
    if config.num_gpus_per_actor > 0 and config.gpu_memory_gb is None:
        fit = assess_on_cluster(config, model_config)
    return ClusterCheck(feasibility, refused, fit)


def check_cluster(config: RunConfig) -> None:
    """On the live cluster, before any actor: refuse (ValueError, one line) a request no node can hold or
    whose model does not fit the nodes' GPUs, and local paths the actors write or read (the output, a model
    directory) that are not the same place on every node that may run one."""
    from .placement import check_shared

    gpu_fit = config.num_gpus_per_actor > 0 and config.gpu_memory_gb is None
    checked = assess_cluster(config, read_model_config(config) if gpu_fit else None)
    if checked.refused:
        raise ValueError(checked.feasibility)
    log.info("actor request %s: %s", request_text(config), checked.feasibility)
    if checked.fit is not None:
        if checked.fit["verdict"] == "refused":
            raise ValueError(checked.fit["line"])
        log.info("%s", checked.fit["line"])
    outputs = {"output": run_dir(config)} if "://" not in config.output else {}
    inputs = {}
    if not config.model.startswith((TINY_PREFIX, "s3://")) and os.path.isdir(config.model):
        inputs["model"] = os.path.join(os.path.abspath(config.model), "config.json")  # preflight: it is there
    if outputs or inputs:
        check_shared(outputs, inputs, config.num_cpus_per_actor, config.num_gpus_per_actor)

"""Run configuration: a YAML file, every field also a flag, validated before any work.

The embedded default (no file, no flags) runs a tiny Llama built from a config on
real bundled XNLI and XCOPA sample instances, in-process Ray, to ./xtp-out.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..names import DTYPE_NAMES, MODULES, is_name
from ..tasks import TASKS, discover, get, names

SCORING = ("generate", "logprobs")
CELL_SPECS = ("full", "target-first", "coarse")
SHARDINGS = ("cost", "size")
TINY_PREFIX = "tiny:"  # tiny:<Architecture>[:<layers>] builds a seeded tiny model in every actor
TINY_RUN_SHAPE = {"hidden": 128, "heads": 4, "kv_heads": 2}  # head size 32: what vLLM's CPU attention needs


def _field(default, help: str, choices=None):
    """A config field with its --help text (and allowed values), the one place both live."""
    metadata = {"help": help, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class RunConfig:
    model: str = _field("tiny:LlamaForCausalLM:4", "save_pretrained directory, s3:// directory, hub id, or "
                        "tiny:<Architecture>[:<layers>] (a seeded tiny model built from a config)")
    engine: str = _field("hf", "hf (transformers, exact against the reference) or vllm", ("hf", "vllm"))
    model_revision: str | None = _field(None, "hub revision (commit) of the model")
    dtype: str = _field("float32", "weights and activations", DTYPE_NAMES)
    attn_implementation: str | None = _field(None, "transformers attention (default: eager for float32, sdpa "
                                             "otherwise)")
    trust_remote_code: bool = _field(False, "run the model repository's own Python code (logged as a warning)")
    tasks: list[str] = _field(["xnli", "xcopa"], "comma-separated tasks", TASKS)
    langs: list[str] = _field(["en", "sw", "zh"], "comma-separated languages, or all")
    splits: list[str] = _field(["sample"], "comma-separated splits: sample, unseen (release files) or the "
                               "original ones (dev, test, val, eval; see `xtp tasks`)")
    limit: int | None = _field(8, "instances per (task, lang, split); null for all")
    data_root: str | None = _field(None, "local dir, s3://..., or hf:PATH (default: the bundled sample splits)")
    modules: list[str] = _field(["ffn"], "comma-separated: what a cell transplants", MODULES)
    cells: str = _field("full", "full, target-first, coarse (the paper's fixed settings) or I:J,I:J,...")
    scoring: str = _field("logprobs", "generate (greedy, max_new_tokens) or logprobs (option log-probs, no "
                          "decoding)", SCORING)
    max_new_tokens: int = _field(20, "tokens generated per cell (scoring generate only)")
    output: str = _field("xtp-out", "local directory or s3://bucket/prefix")
    run_id: str = _field("default", "the run's name under output (letters, digits, '.', '_', '-')")
    min_actors: int = _field(1, "smallest actor pool")
    max_actors: int = _field(1, "largest actor pool")
    num_gpus_per_actor: float = _field(0.0, "GPUs each actor holds (vllm: tensor parallel over them; hf: at most "
                                       "1)")
    tensor_parallel_size: int | None = _field(None, "vllm: ranks per actor (default: the GPUs it holds, or 1; on "
                                              "CPU actors it may exceed 1)")
    gpu_memory_gb: float | None = _field(None, "memory of one GPU, for the fit check before launch (default: "
                                         "read from the nodes' accelerator type where known)")
    num_cpus_per_actor: float = _field(1.0, "CPUs each actor holds")
    batch_size: int = _field(4, "instances per engine call")
    shard_size: int = _field(64, "at most this many instances per candidates file (the unit of resume)")
    sharding: str = _field("cost", "cost: shards of about equal predicted cost for max_actors, costliest first, "
                           "the last wave cut finer; size: shard_size instances per task/split/language, in name "
                           "order", SHARDINGS)
    cells_per_chunk: int | None = _field(None, "cells per forward; bounds peak memory")
    memory_budget_mb: float | None = _field(None, "if set, chunks shrink until their estimated memory fits")
    max_prompt_tokens: int | None = _field(None, "longer prompts are reported and skipped (default: the "
                                           "model's context)")
    allowed_roots: list[str] = _field([], "if set, local model, data and output paths must lie inside these")
    write_retries: int = _field(5, "attempts to commit a shard before the shard fails")
    lease_ttl_s: float = _field(120.0, "a driver's lease on the run lapses this long after its last refresh")
    pool_start_timeout_s: float = _field(1800.0, "the actor pool may wait this long for its first actors to start "
                                         "(an autoscaler adding nodes, model loading); then the run fails, naming "
                                         "what is pending")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """What makes two runs' candidates comparable (everything but where and how wide)."""
        keys = ("model", "model_revision", "engine", "dtype", "attn_implementation", "modules", "cells", "scoring",
                "max_new_tokens")
        return hashlib.sha256(json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True).encode()).hexdigest()[:16]


class ConfigError(ValueError):
    pass


def _fields():
    return {f.name: f for f in dataclasses.fields(RunConfig)}


def add_flags(parser: argparse.ArgumentParser) -> None:
    """--config FILE, plus one flag per field (lists comma-separated; booleans are switches), each with
    its meaning, default and allowed values from the field's metadata."""
    parser.add_argument("--config", help="YAML run configuration (flags override it)")
    for f in dataclasses.fields(RunConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        text = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        shown = ",".join(default) if isinstance(default, list) else default
        text += f" (default: {'none' if shown in (None, '') else shown}"
        text += f"; choices: {', '.join(choices)})" if choices else ")"
        flag = f"--{f.name.replace('_', '-')}"
        if str(f.type).startswith("bool"):
            parser.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction,
                                help=text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, help=text.replace("%", "%%"))


def _coerce(name: str, value):
    annotation = str(_fields()[name].type)

    def refuse(expected):
        raise ConfigError(f"field {name!r}: cannot read {value!r} as {expected}")

    if value is None or (isinstance(value, str) and value.lower() in ("null", "none") and "None" in annotation):
        if "None" not in annotation:
            refuse(annotation)
        return None
    if annotation.startswith("list"):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
                                                  for v in value):
            refuse("a list (comma-separated on the command line)")
        return [str(v).strip() for v in value]
    if annotation.startswith("bool"):
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes"):
            return True
        if str(value).lower() in ("false", "0", "no"):
            return False
        refuse("true or false")
    if annotation.startswith("int"):
        if isinstance(value, bool) or isinstance(value, float):  # no silent truncation of 2.7 to 2
            refuse("an integer")
        try:
            return int(str(value).strip())
        except ValueError:
            refuse("an integer")
    if annotation.startswith("float"):
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):  # NaN and inf pass every comparison the checks make
            refuse("a finite number")
        return number
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        refuse("a string")
    return str(value)


def load_config(args: argparse.Namespace | None = None, path: str | None = None) -> RunConfig:
    """Defaults < YAML file < flags; then validated."""
    values = {}
    path = path or (getattr(args, "config", None) if args else None)
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        try:
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of fields")
        unknown = sorted(set(loaded) - set(_fields()))
        if unknown:
            raise ConfigError(f"{path}: unknown field(s) {', '.join(unknown)}; fields: {', '.join(_fields())}")
        values.update(loaded)
    if args is not None:
        values.update({k: v for k, v in vars(args).items() if k in _fields() and v is not None})
    config = RunConfig(**{k: _coerce(k, v) for k, v in values.items()})
    validate(config, source=path)
    return config


def _inside(path: str, roots: list[str]) -> bool:
    resolved = Path(path).resolve()
    return any(resolved == Path(r).resolve() or Path(r).resolve() in resolved.parents for r in roots)


def validate(config: RunConfig, source: str | None = None) -> None:
    """Everything that can be checked before a model loads or a GPU is touched."""
    where = f"{source}: " if source else ""

    def fail(message):
        raise ConfigError(where + message)

    from ..engine.load import ENGINES

    if config.engine not in ENGINES:
        fail(f"engine {config.engine!r} unknown; choose one of {', '.join(ENGINES)}")
    if config.engine == "vllm":
        unsupported = [m for m in config.modules if m not in ("ffn", "attn")]
        if unsupported:
            fail(f"the vllm engine supports modules ffn and attn, not {', '.join(unsupported)}")
    if config.dtype not in DTYPE_NAMES:
        fail(f"dtype {config.dtype!r} unknown; choose one of {', '.join(DTYPE_NAMES)}")
    for name in ("tasks", "langs", "splits", "modules"):
        if not getattr(config, name):
            fail(f"{name} is empty: name at least one")
    for kind, values in (("language", config.langs), ("split", config.splits)):
        for value in values:
            if not is_name(value):
                fail(f"{kind} {value!r}: only letters, digits, '.', '_' and '-' (it becomes part of a path)")
    for module in config.modules:
        if module not in MODULES:
            fail(f"module {module!r} unknown; modules: {', '.join(MODULES)}")
    if config.sharding not in SHARDINGS:
        fail(f"sharding {config.sharding!r} unknown; choose cost or size")
    if config.scoring not in SCORING:
        fail(f"scoring {config.scoring!r} unknown; choose generate or logprobs")
    if config.cells not in CELL_SPECS and not re.fullmatch(r"\s*-?\d+:-?\d+(\s*,\s*-?\d+:-?\d+)*\s*", config.cells):
        fail(f"cells {config.cells!r}: expected full, target-first, coarse or I:J,I:J,...")
    for name in ("batch_size", "shard_size", "min_actors", "max_actors", "max_new_tokens", "write_retries"):
        value = getattr(config, name)
        if value < (0 if name in ("max_new_tokens",) else 1):
            fail(f"{name} must be positive, got {value}")
    if config.scoring == "generate" and config.max_new_tokens < 1:
        fail("max_new_tokens must be at least 1 when scoring generated text")
    for name in ("cells_per_chunk", "limit", "max_prompt_tokens"):
        value = getattr(config, name)
        if value is not None and value < 1:
            fail(f"{name} must be positive, got {value}")
    if config.max_actors < config.min_actors:
        fail(f"max_actors ({config.max_actors}) is below min_actors ({config.min_actors})")
    if config.memory_budget_mb is not None and config.memory_budget_mb <= 0:
        fail(f"memory_budget_mb must be positive, got {config.memory_budget_mb}")
    if config.pool_start_timeout_s < 1:
        fail(f"pool_start_timeout_s must be at least 1 second, got {config.pool_start_timeout_s}")
    if config.lease_ttl_s < 1:
        fail(f"lease_ttl_s must be at least 1 second, got {config.lease_ttl_s}")
    if config.num_gpus_per_actor < 0 or config.num_cpus_per_actor <= 0:
        fail("num_gpus_per_actor must be >= 0 and num_cpus_per_actor > 0")
    _validate_devices(config, fail)
    if not is_name(config.run_id):
        fail(f"run_id {config.run_id!r}: letters, digits, '.', '_' and '-' only")
    for name in ("model", "data_root", "output"):
        value = getattr(config, name)
        if value and value.startswith("hf:"):
            value = value[3:]  # hf:PATH is a local dataset directory where PATH is one
            if not (Path(value).exists() or value.startswith((".", "/"))):
                continue  # a hub name
        if not value or value.startswith(TINY_PREFIX) or value.startswith("s3://"):
            continue
        local = (name == "output" or Path(value).exists() or value.startswith((".", "/"))
                 or ".." in Path(value).parts)
        if ".." in Path(value).parts and config.allowed_roots and not _inside(value, config.allowed_roots):
            fail(f"{name} {value!r} escapes the allowed roots {config.allowed_roots} via '..'")
        if local and config.allowed_roots and not _inside(value, config.allowed_roots):
            fail(f"{name} {value!r} is outside the allowed roots {config.allowed_roots}")
    if config.model.startswith(TINY_PREFIX):
        try:
            tiny_spec(config.model)
        except ValueError as exc:
            fail(str(exc))
    _validate_tasks(config, fail)  # after the paths: an own task is read from under the data root
    if config.scoring == "logprobs":
        open_tasks = [t for t in config.tasks if get(t).open_answer]
        if open_tasks:
            fail(f"scoring logprobs needs option tasks; {', '.join(open_tasks)} have open answers (use generate)")


def _validate_tasks(config: RunConfig, fail) -> None:
    """Every task built in, or a lab's own under the data root (tasks/custom.py)."""
    if not all(task in names() for task in config.tasks) and config.data_root:
        try:
            discover(config.data_root)
        except ValueError as exc:
            fail(str(exc))
    for task in config.tasks:
        if task not in names():
            fail(f"task {task!r} unknown; tasks: {', '.join(names())}")


def tensor_parallel_size(config: RunConfig) -> int:
    """The vllm engine's ranks per actor: as configured, else one per GPU held (at least 1)."""
    return config.tensor_parallel_size or max(1, int(config.num_gpus_per_actor))


def _validate_devices(config: RunConfig, fail) -> None:
    """How an actor's devices are used: vLLM runs one rank per GPU it holds; the hf engine one device."""
    if config.tensor_parallel_size is not None and config.tensor_parallel_size < 1:
        fail(f"tensor_parallel_size must be positive, got {config.tensor_parallel_size}")
    if config.gpu_memory_gb is not None and config.gpu_memory_gb <= 0:
        fail(f"gpu_memory_gb must be positive, got {config.gpu_memory_gb}")
    if config.engine == "hf":
        if config.num_gpus_per_actor > 1:
            # its per-layer state (row plans, own-token caches, donor values) would sit on the first GPU
            # while device_map="auto" spreads the layers: a path never run, so refused
            fail(f"the hf engine runs on one GPU per actor, not {config.num_gpus_per_actor:g}: for models "
                 "beyond one GPU use engine: vllm with num_gpus_per_actor = its tensor-parallel size")
        if config.tensor_parallel_size not in (None, 1):
            fail(f"tensor_parallel_size {config.tensor_parallel_size} needs engine: vllm (the hf engine runs "
                 "on one device)")
    elif config.tensor_parallel_size is not None and config.num_gpus_per_actor > 0 and \
            config.tensor_parallel_size != max(1, int(config.num_gpus_per_actor)):
        fail(f"tensor_parallel_size {config.tensor_parallel_size} differs from num_gpus_per_actor "
             f"{config.num_gpus_per_actor:g}: on GPUs vLLM runs one rank per GPU the actor holds")


def tiny_spec(model: str) -> tuple[str, int]:
    """(architecture, layers) of a `tiny:<architecture>[:<layers>]` model name."""
    from ..engine.tiny import TINY_CONFIGS

    parts = model[len(TINY_PREFIX):].split(":")
    if parts[0] not in TINY_CONFIGS or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError(f"model {model!r}: expected tiny:<architecture>[:<layers>] with one of "
                         f"{', '.join(TINY_CONFIGS)}")
    return parts[0], int(parts[1]) if len(parts) == 2 else 4


def coarse_setting(task: str) -> tuple[str, str]:
    """(module, cell spec) of the paper's fixed coarse setting for a task."""
    module, (i, j) = get(task).coarse
    return module, f"{-1 if i == 'last' else i}:{j}"

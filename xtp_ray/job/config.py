"""Run configuration: a YAML file, every field also a flag, validated before any work.

`RunConfig` is a pydantic model: each field's type (a `Literal` where its values are fixed), bounds and
meaning are declared once and serve three readers: validation, the `xtp run` flags (`add_flags`) and
the JSON Schema editors check jobs/*.yaml against (`xtp config --schema`). Rules between fields are the
model's own validator. What the value alone cannot tell (the task registry, a lab's own tasks under the
data root, a tiny model's architecture, local paths against allowed_roots) is checked by `validate`.

The embedded default (no file, no flags) runs a tiny Llama built from a config on
real bundled XNLI and XCOPA sample instances, in-process Ray, to ./xtp-out.
"""
import argparse
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError, model_validator

from ..engine.load import ENGINES
from ..names import DTYPE_NAMES, MODULES, NAME
from ..tasks import TASKS, discover, get, names

SCORING = ("generate", "logprobs")
CELL_SPECS = ("full", "target-first", "coarse")
SHARDINGS = ("cost", "size")
TINY_PREFIX = "tiny:"  # tiny:<Architecture>[:<layers>] builds a seeded tiny model in every actor
TINY_RUN_SHAPE = {"hidden": 128, "heads": 4, "kv_heads": 2}  # head size 32: what vLLM's CPU attention needs

SAFE_NAME = f"^{NAME.pattern}$"  # a language, split or run id becomes part of a path
CELLS = rf"^(?:{'|'.join(CELL_SPECS)}|\s*-?\d+:-?\d+(?:\s*,\s*-?\d+:-?\d+)*\s*)$"
ON_MISMATCH = {  # what a value that misses its field's pattern is told
    "cells": "cells {value!r}: expected full, target-first, coarse or I:J,I:J,...",
    "langs": "language {value!r}: only letters, digits, '.', '_' and '-' (it becomes part of a path)",
    "splits": "split {value!r}: only letters, digits, '.', '_' and '-' (it becomes part of a path)",
    "run_id": "run_id {value!r}: letters, digits, '.', '_' and '-' only",
}


class ConfigError(ValueError):
    """A configuration that cannot run, in one line; `field` names the field it is about, if one."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def _read_text(value: Any) -> Any:
    """A number or null given as text (a flag's value, a quoted YAML scalar): 'null' or 'none' is null, '3' an
    int, '2.7', '1e3' or 'nan' a float; the field's strict type then decides, so `--limit 2.7` is refused as
    `limit: 2.7` is, never truncated, and 'nan' is refused as no finite number."""
    if not isinstance(value, str):
        return value
    if value.strip().lower() in ("null", "none"):
        return None
    for number in (int, float):
        try:
            return number(value)
        except ValueError:
            pass
    return value


def _read_null(value: Any) -> Any:
    """'null' or 'none' given as text to an optional string field is null; any other text is kept as written."""
    return None if isinstance(value, str) and value.strip().lower() in ("null", "none") else value


def _split(value: Any) -> Any:
    """Comma-separated text (a flag's value, or a YAML scalar) is a list; items are stripped."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, list):
        return [item.strip() if isinstance(item, str) else item for item in value]
    return value


Integer = Annotated[int, Strict()]  # 2.7, 3.0 and true are no integers
Number = Annotated[float, Strict()]  # an int is a number; NaN and inf are refused (allow_inf_nan)
Read = BeforeValidator(_read_text)
Null = BeforeValidator(_read_null)
SafeName = Annotated[str, Field(pattern=SAFE_NAME)]


def _items(item, least: int = 1) -> BeforeValidator:
    """A list field: a YAML list, or comma-separated text (the schema says both)."""
    return BeforeValidator(_split, json_schema_input_type=Annotated[list[item], Field(min_length=least)] | str)


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, coerce_numbers_to_str=True,
                              validate_assignment=True,
                              json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"})

    model: str = Field("tiny:LlamaForCausalLM:4", description="save_pretrained directory, s3:// directory, hub id, "
                       "or tiny:<Architecture>[:<layers>] (a seeded tiny model built from a config)")
    engine: Literal[ENGINES] = Field("hf", description="hf (transformers, exact against the reference) or vllm")
    model_revision: Annotated[str | None, Null] = Field(None, description="hub revision (commit) of the model")
    dtype: Literal[DTYPE_NAMES] = Field("float32", description="weights and activations")
    attn_implementation: Annotated[str | None, Null] = Field(
        None, description="transformers attention (default: eager for float32, sdpa otherwise)")
    trust_remote_code: bool = Field(False, description="run the model repository's own Python code (logged as a "
                                    "warning)")
    tasks: Annotated[list[str], _items(str)] = Field(
        ["xnli", "xcopa"], min_length=1, description=f"comma-separated tasks: {', '.join(TASKS)}, or a lab's own "
        "(tasks/custom.py under data_root)")
    langs: Annotated[list[SafeName], _items(SafeName)] = Field(
        ["en", "sw", "zh"], min_length=1, description="comma-separated languages, or all")
    splits: Annotated[list[SafeName], _items(SafeName)] = Field(
        ["sample"], min_length=1, description="comma-separated splits: sample, unseen (release files) or the "
        "original ones (dev, test, val, eval; see `xtp tasks`)")
    limit: Annotated[Integer | None, Read] = Field(8, gt=0, description="instances per (task, lang, split); null "
                                                   "for all")
    data_root: Annotated[str | None, Null] = Field(None, description="local dir, s3://..., or hf:PATH (default: the "
                                                   "bundled sample splits)")
    modules: Annotated[list[Literal[MODULES]], _items(Literal[MODULES])] = Field(
        ["ffn"], min_length=1, description="comma-separated: what a cell transplants")
    cells: str = Field("full", pattern=CELLS, description="full, target-first, coarse (the paper's fixed settings) "
                       "or I:J,I:J,...")
    scoring: Literal[SCORING] = Field("logprobs", description="generate (greedy, max_new_tokens) or logprobs "
                                      "(option log-probs, no decoding)")
    max_new_tokens: Annotated[Integer, Read] = Field(20, ge=0, description="tokens generated per cell (scoring "
                                                     "generate only)")
    output: str = Field("xtp-out", description="local directory or s3://bucket/prefix")
    run_id: SafeName = Field("default", description="the run's name under output (letters, digits, '.', '_', '-')")
    min_actors: Annotated[Integer, Read] = Field(1, gt=0, description="smallest actor pool")
    max_actors: Annotated[Integer, Read] = Field(1, gt=0, description="largest actor pool")
    num_gpus_per_actor: Annotated[Number, Read] = Field(
        0.0, ge=0, description="GPUs each actor holds (vllm: tensor parallel over them; hf: at most 1)")
    tensor_parallel_size: Annotated[Integer | None, Read] = Field(
        None, gt=0, description="vllm: ranks per actor (default: the GPUs it holds, or 1; on CPU actors it may "
        "exceed 1)")
    gpu_memory_gb: Annotated[Number | None, Read] = Field(
        None, gt=0, description="memory of one GPU, for the fit check before launch (default: read from the nodes' "
        "accelerator type where known)")
    num_cpus_per_actor: Annotated[Number, Read] = Field(1.0, gt=0, description="CPUs each actor holds")
    batch_size: Annotated[Integer, Read] = Field(4, gt=0, description="instances per engine call")
    shard_size: Annotated[Integer, Read] = Field(64, gt=0, description="at most this many instances per candidates "
                                                 "file (the unit of resume)")
    sharding: Literal[SHARDINGS] = Field(
        "cost", description="cost: shards of about equal predicted cost for max_actors, costliest first, the last "
        "wave cut finer; size: shard_size instances per task/split/language, in name order")
    cells_per_chunk: Annotated[Integer | None, Read] = Field(None, gt=0, description="cells per forward; bounds peak "
                                                             "memory")
    memory_budget_mb: Annotated[Number | None, Read] = Field(
        None, gt=0, description="if set, chunks shrink until their estimated memory fits")
    max_prompt_tokens: Annotated[Integer | None, Read] = Field(
        None, gt=0, description="longer prompts are reported and skipped (default: the model's context)")
    allowed_roots: Annotated[list[str], _items(str, 0)] = Field(
        [], description="if set, local model, data and output paths must lie inside these")
    write_retries: Annotated[Integer, Read] = Field(5, gt=0, description="attempts to commit a shard before the "
                                                    "shard fails")
    lease_ttl_s: Annotated[Number, Read] = Field(120.0, ge=1, description="a driver's lease on the run lapses this "
                                                 "long after its last refresh")
    pool_start_timeout_s: Annotated[Number, Read] = Field(
        1800.0, ge=1, description="the actor pool may wait this long for its first actors to start (an autoscaler "
        "adding nodes, model loading); then the run fails, naming what is pending")

    def __init__(self, **values):
        try:
            super().__init__(**values)
        except ValidationError as exc:  # one line, naming the field (load_config adds the flag or file)
            error = exc.errors()[0]
            more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
            raise ConfigError(_message(error, values) + more, str(error["loc"][0]) if error["loc"] else None) \
                from None

    @model_validator(mode="after")
    def _check_together(self):
        """Rules between fields."""
        if self.engine == "vllm":
            unsupported = [m for m in self.modules if m not in ("ffn", "attn")]
            if unsupported:
                raise ValueError(f"the vllm engine supports modules ffn and attn, not {', '.join(unsupported)}")
        if self.scoring == "generate" and self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1 when scoring generated text")
        if self.max_actors < self.min_actors:
            raise ValueError(f"max_actors ({self.max_actors}) is below min_actors ({self.min_actors})")
        _check_devices(self)
        return self

    def to_json(self) -> dict:
        return self.model_dump()

    @property
    def new_tokens(self) -> int:
        """Tokens decoded per row: max_new_tokens when generating, none when scoring options."""
        return self.max_new_tokens if self.scoring == "generate" else 0

    def replace(self, **changes) -> "RunConfig":
        """A copy with these fields changed, validated again."""
        return RunConfig(**{**self.to_json(), **changes})

    def digest(self) -> str:
        """What makes two runs' candidates comparable (everything but where and how wide)."""
        keys = ("model", "model_revision", "engine", "dtype", "attn_implementation", "modules", "cells", "scoring",
                "max_new_tokens")
        return hashlib.sha256(json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True).encode()).hexdigest()[:16]


def _check_devices(config: RunConfig) -> None:
    """How an actor's devices are used: vLLM runs one rank per GPU it holds; the hf engine one device."""
    if config.engine == "hf":
        if config.num_gpus_per_actor > 1:
            # its per-layer state (row plans, own-token caches, donor values) would sit on the first GPU
            # while device_map="auto" spreads the layers: a path never run, so refused
            raise ValueError(f"the hf engine runs on one GPU per actor, not {config.num_gpus_per_actor:g}: for "
                             "models beyond one GPU use engine: vllm with num_gpus_per_actor = its tensor-parallel "
                             "size")
        if config.tensor_parallel_size not in (None, 1):
            raise ValueError(f"tensor_parallel_size {config.tensor_parallel_size} needs engine: vllm (the hf engine "
                             "runs on one device)")
    elif config.tensor_parallel_size is not None and config.num_gpus_per_actor > 0 and \
            config.tensor_parallel_size != max(1, int(config.num_gpus_per_actor)):
        raise ValueError(f"tensor_parallel_size {config.tensor_parallel_size} differs from num_gpus_per_actor "
                         f"{config.num_gpus_per_actor:g}: on GPUs vLLM runs one rank per GPU the actor holds")


READ_AS = {  # pydantic's error types of a value of the wrong kind, and what the field reads
    **dict.fromkeys(("int_type", "int_parsing", "int_from_float"), "an integer"),
    **dict.fromkeys(("float_type", "float_parsing", "finite_number"), "a finite number"),
    **dict.fromkeys(("bool_type", "bool_parsing"), "true or false"),
    "string_type": "a string", "list_type": "a list (comma-separated on the command line)"}


def choices(name: str) -> tuple[str, ...]:
    """The values a field (or each item of a list field) may take, from its `Literal` type; () if open."""
    annotation = RunConfig.model_fields[name].annotation
    if get_origin(annotation) is list:
        annotation = get_args(annotation)[0]
    return get_args(annotation) if get_origin(annotation) is Literal else ()


def _message(error: dict, given: dict) -> str:
    """One validation error in the words of a person: the field, the value as given, and what it must be."""
    kind, loc, ctx = error["type"], error["loc"], error.get("ctx", {})
    if not loc:  # the model's own rules between fields
        return str(ctx.get("error", error["msg"]))
    name = str(loc[0])
    value = given.get(name, error["input"]) if len(loc) == 1 else error["input"]  # as the user wrote it
    if kind in READ_AS:
        return f"field {name!r}: cannot read {value!r} as {READ_AS[kind]}"
    if kind == "literal_error":  # an item of a list field is named in the singular: module 'mlp'
        noun = name[:-1] if len(loc) > 1 and name.endswith("s") else name
        return f"{noun} {error['input']!r} unknown; choose one of {', '.join(choices(name))}"
    if kind == "greater_than":
        return f"{name} must be positive, got {value}" if ctx["gt"] == 0 else \
            f"{name} must be greater than {ctx['gt']:g}, got {value}"
    if kind == "greater_than_equal":
        return f"{name} must be at least {ctx['ge']:g}{' second' if name.endswith('_s') else ''}, got {value}"
    if kind == "too_short":
        return f"{name} is empty: name at least one"
    if kind == "string_pattern_mismatch" and name in ON_MISMATCH:
        return ON_MISMATCH[name].format(value=error["input"])
    if kind == "extra_forbidden":
        return f"unknown field(s) {name}; fields: {', '.join(RunConfig.model_fields)}"
    if kind == "value_error":
        return str(ctx["error"])
    return f"field {name!r}: {error['msg']}"


def json_schema() -> dict:
    """The JSON Schema of a run configuration file (`xtp config --schema`)."""
    return RunConfig.model_json_schema()


def add_flags(parser: argparse.ArgumentParser) -> None:
    """--config FILE, plus one flag per field (lists comma-separated; booleans are switches), each with
    its meaning, default and allowed values from the field's declaration."""
    parser.add_argument("--config", help="YAML run configuration (flags override it)")
    for name, info in RunConfig.model_fields.items():
        default = info.get_default(call_default_factory=True)
        shown = ",".join(default) if isinstance(default, list) else default
        text = f"{info.description} (default: {'none' if shown in (None, '') else shown}"
        text += f"; choices: {', '.join(choices(name))})" if choices(name) else ")"
        flag = f"--{name.replace('_', '-')}"
        if info.annotation is bool:
            parser.add_argument(flag, dest=name, default=None, action=argparse.BooleanOptionalAction, help=text)
        else:
            parser.add_argument(flag, dest=name, default=None, help=text.replace("%", "%%"))


def _read_file(path: str) -> dict:
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
    unknown = sorted(set(map(str, loaded)) - set(RunConfig.model_fields))
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {', '.join(unknown)}; fields: {', '.join(RunConfig.model_fields)}")
    return loaded


def load_config(args: argparse.Namespace | None = None, path: str | None = None) -> RunConfig:
    """Defaults < YAML file < flags; then validated. An error names the flag or the file its field came from."""
    values, origin = {}, {}
    path = path or (getattr(args, "config", None) if args else None)
    if path:
        values.update(_read_file(path))
        origin.update(dict.fromkeys(values, path))
    if args is not None:
        flags = {k: v for k, v in vars(args).items() if k in RunConfig.model_fields and v is not None}
        values.update(flags)
        origin.update({k: f"--{k.replace('_', '-')}" for k in flags})
    try:
        config = RunConfig(**values)
    except ConfigError as exc:
        where = origin.get(exc.field, path)
        raise ConfigError(f"{where}: {exc}" if where else str(exc), exc.field) from None
    validate(config, source=path)
    return config


def _inside(path: str, roots: list[str]) -> bool:
    resolved = Path(path).resolve()
    return any(resolved == Path(r).resolve() or Path(r).resolve() in resolved.parents for r in roots)


def validate(config: RunConfig, source: str | None = None) -> None:
    """What the value alone cannot tell, checked before a model loads or a GPU is touched: local paths against
    allowed_roots, a tiny model's architecture, the tasks (built in, or a lab's own under the data root)."""
    where = f"{source}: " if source else ""

    def fail(message):
        raise ConfigError(where + message)

    _check_paths(config, fail)
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


def _check_paths(config: RunConfig, fail) -> None:
    """With allowed_roots set, every local path the run reads or writes resolves inside one of them."""
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

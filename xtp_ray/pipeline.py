"""The distributed job: instances -> Ray Data -> GridSearch actors -> committed Parquet shards.

Instances are cut into shards (one task/split/lang each, `shard_size` instances,
named deterministically). A shard is the unit of work and of resume: the actor
that runs it writes `<output>/<run_id>/candidates/<shard>.parquet` through a
temporary name and a move, so a file under that name is always complete, and a
rerun skips the shards already there. Ray retries work lost with a killed actor;
rewriting a shard is idempotent, so nothing is duplicated.
"""
from __future__ import annotations

import json
import logging
import os
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__, storage
from .cells import parse_cells
from .config import TINY_PREFIX, TINY_RUN_SHAPE, RunConfig, coarse_setting, tiny_spec
from .tasks import Instance, InstanceError, list_languages, load_instances, task_splits

log = logging.getLogger("xtp_ray")

CANDIDATE_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("model", pa.string()), ("model_revision", pa.string()), ("dtype", pa.string()),
    ("task", pa.string()), ("split", pa.string()), ("lang", pa.string()), ("instance_id", pa.string()),
    ("direction", pa.string()), ("module", pa.string()),
    ("source_layer", pa.int32()), ("target_layer", pa.int32()),  # both null for vanilla
    ("prediction", pa.string()), ("token_ids", pa.list_(pa.int32())),
    ("correct", pa.bool_()), ("score", pa.float64()),
    ("option_logprobs", pa.list_(pa.float64())),  # null for open-answer tasks
    ("metrics", pa.string()),  # JSON: em / f1 (XQuAD), js_similarity (GlobalOpinionQA)
    ("num_layers", pa.int32()), ("config", pa.string()),  # JSON: what reproduces the row
])
INPUT_COLUMNS = ("shard", "instances")


def run_dir(config: RunConfig) -> str:
    return storage.join(config.output, config.run_id)


def candidates_dir(config: RunConfig) -> str:
    return storage.join(run_dir(config), "candidates")


# ---------------------------------------------------------------- planning

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


def committed_shards(config: RunConfig) -> set[str]:
    names = storage.list_names(candidates_dir(config))
    return {n[:-len(".parquet")] for n in names if n.endswith(".parquet")}


# ---------------------------------------------------------------- model loading

def load_for_run(config: RunConfig):
    """(engine, revision) for tiny:<arch>[:<layers>], a local dir, s3:// dir or hub id.

    A tiny model is built from its config (seeded, hidden 128 and 4 heads: head size
    32, as vLLM's CPU attention needs) and, for the vllm engine, saved to a temporary
    directory first.
    """
    import hashlib
    import tempfile

    from .engines import load_engine

    if config.model.startswith(TINY_PREFIX):
        from .tiny import save_tiny_model

        architecture, layers = tiny_spec(config.model)
        path = tempfile.mkdtemp(prefix="xtp-tiny-")
        save_tiny_model(path, architecture, num_layers=layers, **TINY_RUN_SHAPE)
        return load_engine(config.engine, path, config.dtype, config.attn_implementation, config.num_gpus_per_actor,
                           max_model_len=config.max_prompt_tokens and config.max_prompt_tokens + config.max_new_tokens
                           ), "tiny-seed0"
    path = config.model
    if path.startswith("s3://"):
        import pyarrow.fs as pafs

        fs, remote = storage.resolve(path)
        local = tempfile.mkdtemp(prefix="xtp-model-")
        pafs.copy_files(remote, local, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        path = local
    engine = load_engine(config.engine, path, config.dtype, config.attn_implementation, config.num_gpus_per_actor,
                         trust_remote_code=config.trust_remote_code, revision=config.model_revision)
    revision = config.model_revision
    if not revision and os.path.isdir(path):
        digest = hashlib.sha256()
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            digest.update(name.encode() + str(os.path.getsize(full)).encode())
            if name == "config.json":
                digest.update(open(full, "rb").read())
        revision = "local-" + digest.hexdigest()[:12]
    return engine, revision or "unknown"


# ---------------------------------------------------------------- the actor

class GridSearch:
    """Ray Data callable: one transplant-ready model per actor, one shard per call."""

    def __init__(self, config: dict):
        self.config = RunConfig(**config)
        self.engine, self.revision = load_for_run(self.config)
        self.tokenizer = self.engine.tokenizer
        self.num_layers = self.engine.num_layers
        self.max_tokens = self.config.max_prompt_tokens or self.engine.context_length
        self.row_config = json.dumps({"digest": self.config.digest(), "engine": self.config.engine,
                                      "cells": self.config.cells,
                                      "scoring": self.config.scoring, "max_new_tokens": self.config.max_new_tokens,
                                      "attn_implementation": self.config.attn_implementation,
                                      "xtp_ray": __version__}, sort_keys=True)

    def __call__(self, batch: dict) -> dict:
        missing = [c for c in INPUT_COLUMNS if c not in batch]
        if missing:
            raise ValueError(f"GridSearch input lacks column(s) {missing}; expected {list(INPUT_COLUMNS)}")
        out = {"shard": [], "rows": [], "instances": [], "cells": [], "skipped": [], "seconds": [], "revision": []}
        for shard, payload in zip(batch["shard"], batch["instances"]):
            start = time.perf_counter()
            instances = [Instance.from_row(r) for r in json.loads(payload)]
            table, skipped, cells = self.run_shard(instances)
            write_shard(self.config, str(shard), table, skipped)
            out["shard"].append(str(shard))
            out["rows"].append(table.num_rows)
            out["instances"].append(len(instances) - len(skipped))
            out["cells"].append(cells)
            out["skipped"].append(json.dumps(skipped))
            out["seconds"].append(time.perf_counter() - start)
            out["revision"].append(self.revision)
            log.info("shard %s: %d instances, %d rows in %.1f s", shard, len(instances), table.num_rows,
                     out["seconds"][-1])
        return out

    def settings(self, task: str) -> list[tuple[str, list]]:
        """(module, cells) pairs to run for a task."""
        if self.config.cells == "coarse":
            module, spec = coarse_setting(task)
            return [(module, parse_cells(spec, self.num_layers))]
        return [(module, parse_cells(self.config.cells, self.num_layers)) for module in self.config.modules]

    def run_shard(self, instances: list[Instance]) -> tuple[pa.Table, list[dict], int]:
        from .scoring import option_token_ids, score

        kept, skipped = [], []
        for inst in instances:
            too_long = self._too_long(inst)
            if too_long:
                skipped.append({"instance_id": inst.id, "reason": too_long})
            else:
                kept.append(inst)
        rows, cells_run = [], 0
        new_tokens = self.config.max_new_tokens if self.config.scoring == "generate" else 0
        for start in range(0, len(kept), self.config.batch_size):
            batch = kept[start:start + self.config.batch_size]
            options = [option_token_ids(self.tokenizer, i.options) if i.options else [] for i in batch]
            for module, cells in self.settings(batch[0].task):
                results = self.engine.run_grid(
                    [i.donor for i in batch], [i.recipient for i in batch], cells,
                    module, new_tokens, cells_per_chunk=self.config.cells_per_chunk,
                    option_token_ids=options if all(options) else None,
                    memory_budget_mb=self.config.memory_budget_mb)
                for inst, cell_results in zip(batch, results):
                    for result in cell_results:
                        cells_run += 1
                        rows.append(self._row(inst, module, result, score))
        return pa.Table.from_pylist(rows, schema=CANDIDATE_SCHEMA), skipped, cells_run

    def _too_long(self, inst: Instance) -> str | None:
        if not self.max_tokens:
            return None
        for name, prompt in (("donor", inst.donor), ("recipient", inst.recipient)):
            n = len(self.tokenizer(prompt).input_ids)
            if n + self.config.max_new_tokens > self.max_tokens:
                return (f"{name} prompt of {n} tokens + {self.config.max_new_tokens} new tokens exceeds the "
                        f"limit of {self.max_tokens} tokens")
        return None

    def _row(self, inst: Instance, module: str, result, score) -> dict:
        text = self.tokenizer.decode(result.token_ids, skip_special_tokens=True) if result.token_ids else None
        scored = score(inst, text, result.option_logprobs)
        metrics = {k: v for k, v in scored.items() if k not in ("correct", "score", "prediction")}
        return {"run_id": self.config.run_id, "model": self.config.model, "model_revision": self.revision,
                "dtype": self.config.dtype, "task": inst.task, "split": inst.split, "lang": inst.lang,
                "instance_id": inst.id, "direction": inst.direction, "module": module,
                "source_layer": result.cell.source_layer, "target_layer": result.cell.target_layer,
                "prediction": text if text is not None else scored.get("prediction"),
                "token_ids": result.token_ids, "correct": bool(scored["correct"]), "score": scored["score"],
                "option_logprobs": result.option_logprobs, "metrics": json.dumps(metrics),
                "num_layers": self.num_layers, "config": self.row_config}


# ---------------------------------------------------------------- committing shards

class ShardWriteError(RuntimeError):
    pass


def write_shard(config: RunConfig, shard: str, table: pa.Table, skipped: list[dict]) -> str:
    """Write then commit: a temporary object, then a move onto the shard's name.

    Retries with exponential backoff (object store briefly unavailable); after
    `write_retries` attempts, raises naming the shard that was not written.
    """
    final = storage.join(candidates_dir(config), f"{shard}.parquet")
    table = table.replace_schema_metadata({"xtp_skipped": json.dumps(skipped), "xtp_shard": shard})
    delay = 0.5
    for attempt in range(1, config.write_retries + 1):
        tmp = storage.join(run_dir(config), "_tmp", f"{shard}.{uuid.uuid4().hex}.parquet")
        try:
            fs, tmp_path = storage.resolve(tmp)
            _, final_path = storage.resolve(final)
            fs.create_dir(tmp_path.rsplit("/", 1)[0], recursive=True)
            fs.create_dir(final_path.rsplit("/", 1)[0], recursive=True)
            pq.write_table(table, tmp_path, filesystem=fs)
            fs.move(tmp_path, final_path)
            return final
        except OSError as exc:
            if attempt == config.write_retries:
                raise ShardWriteError(f"shard {shard} not written to {final} after {attempt} attempts: "
                                      f"{_redact(str(exc))}") from None
            log.warning("write of shard %s failed (attempt %d/%d), retrying in %.1f s", shard, attempt,
                        config.write_retries, delay)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
    raise AssertionError("unreachable")


def _redact(text: str) -> str:
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "HF_TOKEN"):
        secret = os.environ.get(name)
        if secret:
            text = text.replace(secret, "***")
    return text


# ---------------------------------------------------------------- the job

def _write_manifest(config: RunConfig, manifest: dict) -> None:
    storage.write_text(storage.join(run_dir(config), "manifest.json"), json.dumps(manifest, indent=2))


def _read_manifest(config: RunConfig) -> dict | None:
    uri = storage.join(run_dir(config), "manifest.json")
    return json.loads(storage.read_text(uri)) if storage.exists(uri) else None


def check_writable(config: RunConfig) -> None:
    probe = storage.join(run_dir(config), f"_probe-{uuid.uuid4().hex}")
    try:
        storage.write_text(probe, "ok")
        fs, path = storage.resolve(probe)
        fs.delete_file(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"output {config.output!r} is not writable: {_redact(str(exc))}") from None


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


def run_job(config: RunConfig, ray_address: str | None = None, take_over: bool = False) -> dict:
    """Grid search over every shard not yet committed, holding the run's lease; returns a summary."""
    from . import lease

    preflight(config)
    check_writable(config)
    with lease.held(run_dir(config), config.lease_ttl_s, take_over) as held:
        summary = _run_planned(config, ray_address)
        if held.lost:
            raise ShardWriteError(f"lost the lease of run {config.run_id!r} to another driver while running; "
                                  "its shards are committed, rerun to check the run is complete")
    return summary


def _run_planned(config: RunConfig, ray_address: str | None) -> dict:
    import ray
    from ray.data import ActorPoolStrategy

    shards, load_errors = plan(config)
    for error in load_errors:
        log.warning("left out: %s", error)
    manifest = _read_manifest(config) or {"run_id": config.run_id, "attempts": []}
    if manifest.get("config_digest") not in (None, config.digest()):
        raise ValueError(f"run {config.run_id!r} in {config.output} was made with another model/cells/scoring "
                         "configuration; use a new run_id")
    plan_digest = digest_plan(shards)
    if manifest.get("plan_digest") not in (None, plan_digest):
        # a shard name must always mean the same instances, or resuming would lose or duplicate rows
        raise ValueError(f"run {config.run_id!r} in {config.output} was planned over other instances (tasks, "
                         "langs, splits, limit, shard_size or the data changed); use a new run_id")
    for earlier in manifest["attempts"]:
        if earlier.get("status") == "running":  # its driver died without a word (we hold the lease)
            earlier["status"] = "interrupted"
    done = committed_shards(config)
    todo = sorted(set(shards) - done)
    attempt = {"started": time.time(), "status": "running", "shards_total": len(shards),
               "shards_skipped_as_done": len(set(shards) & done), "shards_todo": len(todo)}
    manifest.update({"config": config.to_json(), "config_digest": config.digest(), "xtp_ray_version": __version__,
                     "status": "running", "shards": sorted(shards), "plan_digest": plan_digest})
    manifest["attempts"].append(attempt)
    _write_manifest(config, manifest)
    storage.write_text(storage.join(run_dir(config), "errors.jsonl"),
                       "".join(json.dumps({"error": str(e)}) + "\n" for e in load_errors))

    summaries = []
    start = time.perf_counter()
    try:
        if todo:
            if not ray.is_initialized():
                ray.init(address=ray_address, include_dashboard=False, log_to_driver=True)
            items = [{"shard": s, "instances": json.dumps([i.to_row() for i in shards[s]])} for s in todo]
            dataset = ray.data.from_items(items, override_num_blocks=len(items))
            results = dataset.map_batches(
                GridSearch, fn_constructor_kwargs={"config": config.to_json()}, batch_size=1,
                compute=ActorPoolStrategy(min_size=config.min_actors, max_size=config.max_actors),
                # Ray Data's actor pools restart lost actors and retry their tasks by default.
                num_gpus=config.num_gpus_per_actor, num_cpus=config.num_cpus_per_actor)
            summaries = results.take_all()
        missing = sorted(set(shards) - committed_shards(config))
        if missing:
            raise ShardWriteError(f"{len(missing)} shard(s) not committed: {', '.join(missing[:10])}")
    except BaseException as exc:
        attempt.update({"status": "failed", "finished": time.time(), "error": _redact(str(exc))[:2000]})
        manifest["status"] = "failed"
        try:
            _write_manifest(config, manifest)
        except OSError:
            log.error("could not record the failure in the manifest")
        raise
    seconds = time.perf_counter() - start
    instances = sum(s["instances"] for s in summaries)
    cells = sum(s["cells"] for s in summaries)
    skipped = [e for s in summaries for e in json.loads(s["skipped"])]
    attempt.update({"status": "complete", "finished": time.time(), "seconds": seconds, "instances": instances,
                    "cells": cells, "instances_per_s": instances / seconds if instances else 0.0,
                    "cells_per_s": cells / seconds if cells else 0.0, "skipped": skipped})
    manifest["status"] = "complete"
    manifest["model_revision"] = summaries[0].get("revision") if summaries else manifest.get("model_revision")
    _write_manifest(config, manifest)
    if instances:
        log.info("grid search: %d instances, %d cells in %.1f s: %.2f instances/s, %.1f cells/s",
                 instances, cells, seconds, instances / seconds, cells / seconds)
    return {"run_dir": run_dir(config), "shards": len(shards), "shards_run": len(todo), "instances": instances,
            "cells": cells, "seconds": seconds, "skipped": skipped, "left_out": [str(e) for e in load_errors]}

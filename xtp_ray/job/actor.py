"""The Ray Data callable: one engine per actor (loaded once), one shard per call,
scored candidate rows committed as a Parquet shard."""
from __future__ import annotations

import json
import logging
import os
import time

import pyarrow as pa

from .. import __version__, storage
from ..candidates import CANDIDATE_SCHEMA
from ..cells import parse_cells
from ..results import leftout
from ..scoring import option_token_ids
from ..tasks import Instance, get
from .config import TINY_PREFIX, TINY_RUN_SHAPE, RunConfig, coarse_setting, tensor_parallel_size, tiny_spec
from .shards import write_shard

log = logging.getLogger("xtp_ray")

INPUT_COLUMNS = ("shard", "instances")


def load_for_run(config: RunConfig):
    """(engine, revision) for tiny:<arch>[:<layers>], a local dir, s3:// dir or hub id.

    A tiny model is built from its config (seeded, hidden 128 and 4 heads: head size
    32, as vLLM's CPU attention needs) and, for the vllm engine, saved to a temporary
    directory first.
    """
    import tempfile

    from ..engine.load import load_engine
    from .placement import device_for_actor

    device = device_for_actor(config.num_gpus_per_actor)  # before anything touches CUDA
    ranks = tensor_parallel_size(config) if config.engine == "vllm" else None

    if config.model.startswith(TINY_PREFIX):
        from ..engine.tiny import save_tiny_model

        architecture, layers = tiny_spec(config.model)
        with tempfile.TemporaryDirectory(prefix="xtp-tiny-") as path:  # both engines hold what they load
            save_tiny_model(path, architecture, num_layers=layers, **TINY_RUN_SHAPE)
            limit = config.max_prompt_tokens and config.max_prompt_tokens + config.max_new_tokens
            return load_engine(config.engine, path, config.dtype, config.attn_implementation,
                               config.num_gpus_per_actor, max_model_len=limit, device=device,
                               tensor_parallel_size=ranks), "tiny-seed0"
    path = config.model
    if path.startswith("s3://"):
        import pyarrow.fs as pafs

        fs, remote = storage.resolve(path)
        # the copy goes once the engine holds the weights (both engines load them whole)
        with tempfile.TemporaryDirectory(prefix="xtp-model-") as local:
            pafs.copy_files(remote, local, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
            engine = load_engine(config.engine, local, config.dtype, config.attn_implementation,
                                 config.num_gpus_per_actor, trust_remote_code=config.trust_remote_code,
                                 revision=config.model_revision, device=device, tensor_parallel_size=ranks)
            return engine, config.model_revision or _local_revision(local)
    engine = load_engine(config.engine, path, config.dtype, config.attn_implementation, config.num_gpus_per_actor,
                         trust_remote_code=config.trust_remote_code, revision=config.model_revision, device=device,
                         tensor_parallel_size=ranks)
    revision = config.model_revision or (_local_revision(path) if os.path.isdir(path) else None)
    return engine, revision or "unknown"


def _local_revision(path: str) -> str:
    """A local model directory's identity: its file names and sizes and its config.json."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        digest.update(name.encode() + str(os.path.getsize(full)).encode())
        if name == "config.json":
            with open(full, "rb") as handle:
                digest.update(handle.read())
    return "local-" + digest.hexdigest()[:12]


def _where() -> tuple[str, str]:
    """(actor id, node id) of this process under Ray (the manifest's per-shard timings), else the pid."""
    import ray

    if not ray.is_initialized():  # direct use of the callable: asking Ray's context would start a session
        return f"pid-{os.getpid()}", "local"
    context = ray.get_runtime_context()
    return context.get_actor_id() or f"pid-{os.getpid()}", context.get_node_id()


class GridSearch:
    """Ray Data callable: one transplant-ready model per actor, one shard per call."""

    def __init__(self, config: dict):
        self.config = RunConfig(**config)
        from ..tasks import discover

        discover(self.config.data_root)  # the run's own tasks, as the driver found them
        self.engine, self.revision = load_for_run(self.config)
        self.actor_id, self.node_id = _where()
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
        out = {"shard": [], "rows": [], "instances": [], "cells": [], "skipped": [], "seconds": [], "revision": [],
               "started": [], "finished": [], "actor": [], "node": []}
        for shard, payload in zip(batch["shard"], batch["instances"]):
            start = time.perf_counter()
            out["started"].append(time.time())
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
            out["finished"].append(time.time())
            out["actor"].append(self.actor_id)
            out["node"].append(self.node_id)
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
        kept, skipped = [], []
        for inst in instances:
            too_long = self._too_long(inst)
            if too_long:
                skipped.append(too_long)
            else:
                kept.append(inst)
        skipped_ids = {s["instance_id"] for s in skipped}
        lost = {i.extra.get("group") for i in instances if i.id in skipped_ids} - {None}
        if lost:  # a group is scored whole or not at all
            for inst in [i for i in kept if i.extra.get("group") in lost]:
                skipped.append(leftout.record(
                    "group_skipped", f"{inst.id}: its group {inst.extra['group']} lost a member to the length limit",
                    task=inst.task, split=inst.split, lang=inst.lang, instance_id=inst.id, limit=self.max_tokens))
            kept = [i for i in kept if i.extra.get("group") not in lost]
        rows, cells_run = [], 0
        new_tokens = self.config.max_new_tokens if self.config.scoring == "generate" else 0
        by_task = [[i for i in kept if i.task == task] for task in dict.fromkeys(i.task for i in kept)]
        batches = [group[k:k + self.config.batch_size] for group in by_task
                   for k in range(0, len(group), self.config.batch_size)]  # one task per engine call
        for batch in batches:
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
                        rows.append(self._row(inst, module, result))
        return pa.Table.from_pylist(rows, schema=CANDIDATE_SCHEMA), skipped, cells_run

    def _too_long(self, inst: Instance) -> dict | None:
        """The left-out record (`results.leftout`) of an instance whose prompt does not fit, else None."""
        if not self.max_tokens:
            return None
        new_tokens = self.config.new_tokens
        for name, prompt in (("donor", inst.donor), ("recipient", inst.recipient)):
            n = len(self.tokenizer(prompt).input_ids)
            if n + new_tokens > self.max_tokens:
                return leftout.record("too_long", f"{inst.id}: {name} prompt of {n} tokens + {new_tokens} new tokens "
                                      f"exceeds the limit of {self.max_tokens} tokens", task=inst.task,
                                      split=inst.split, lang=inst.lang, instance_id=inst.id, field=name,
                                      limit=self.max_tokens)
        return None

    def _row(self, inst: Instance, module: str, result) -> dict:
        text = self.tokenizer.decode(result.token_ids, skip_special_tokens=True) if result.token_ids else None
        scored = get(inst.task).score(inst, text, result.option_logprobs)
        metrics = {k: v for k, v in scored.items() if k not in ("correct", "score", "prediction")}
        return {"run_id": self.config.run_id, "model": self.config.model, "model_revision": self.revision,
                "dtype": self.config.dtype, "task": inst.task, "split": inst.split, "lang": inst.lang,
                "instance_id": inst.id, "direction": inst.direction, "module": module,
                "source_layer": result.cell.source_layer, "target_layer": result.cell.target_layer,
                "prediction": text if text is not None else scored.get("prediction"),
                "token_ids": result.token_ids, "correct": bool(scored["correct"]), "score": scored["score"],
                "option_logprobs": result.option_logprobs, "metrics": json.dumps(metrics),
                "num_layers": self.num_layers, "config": self.row_config, "group": inst.extra.get("group")}

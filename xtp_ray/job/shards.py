"""Committed candidate shards: where they live, how one is written whole or not at all, and which a resume
keeps.

A shard is the unit of work and of resume: the actor that runs it writes
`<output>/<run_id>/candidates/<shard>.parquet` through a temporary name and a move,
so a file under that name is always complete, and a rerun skips the shards there.
Rewriting a shard is idempotent, so a retried shard duplicates nothing.
"""
from __future__ import annotations

import json
import logging
import os
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage
from ..candidates import committed_footers, inspect_committed, report_damaged
from ..names import check_name
from ..results.partials import KEY, shard_partials, to_footer
from .config import RunConfig

log = logging.getLogger("xtp_ray")


def run_dir(config: RunConfig) -> str:
    return storage.join_under(config.output, check_name("run id", config.run_id))


def candidates_dir(config: RunConfig) -> str:
    return storage.join(run_dir(config), "candidates")


def committed_shards(config: RunConfig) -> set[str]:
    """Names of the shards committed whole (see `inspect_committed`); damaged ones are logged and left
    out, so a rerun writes them again."""
    committed, damaged = inspect_committed(candidates_dir(config))
    report_damaged(damaged)
    return set(committed)


def resumable_shards(config: RunConfig) -> dict[str, dict[str, str]]:
    """Committed shards a resume may keep, with their footers: all made with this run's config digest
    (checked whether or not the manifest is there: its loss must not let a run mix configurations).
    Damaged shards are reported and run again."""
    footers, damaged = committed_footers(candidates_dir(config))
    committed = {name: meta.get("xtp_config_digest") for name, meta in footers.items()}
    foreign = sorted(name for name, digest in committed.items() if digest != config.digest())
    if foreign:
        raise ValueError(f"run {config.run_id!r} in {config.output} holds {len(foreign)} shard(s) made with another "
                         f"model/cells/scoring configuration (e.g. {foreign[0]}: digest "
                         f"{committed[foreign[0]]}, this run's is {config.digest()}); use a new run_id")
    report_damaged(damaged)
    return footers


def remove_temporaries(config: RunConfig) -> None:
    """Drop `<run>/_tmp` once every actor is done: what is left there is from attempts that died."""
    fs, path = storage.resolve(storage.join(run_dir(config), "_tmp"))
    try:
        fs.delete_dir(path)
    except OSError:  # absent, or the store refused: nothing is lost either way
        pass


class ShardWriteError(RuntimeError):
    pass


def write_shard(config: RunConfig, shard: str, table: pa.Table, skipped: list[dict]) -> str:
    """Write then commit: a temporary object, then a move onto the shard's name.

    Retries with exponential backoff (object store briefly unavailable); after
    `write_retries` attempts, raises naming the shard that was not written.
    """
    final = storage.join_under(candidates_dir(config), f"{check_name('shard', shard)}.parquet")
    # the shard's partial aggregates ride in its own footer: committed whole with it, or not at all
    partials = to_footer(shard_partials(table, shard)) if table.num_rows else None
    table = table.replace_schema_metadata({"xtp_skipped": json.dumps(skipped), "xtp_shard": shard,
                                           "xtp_rows": str(table.num_rows), "xtp_config_digest": config.digest(),
                                           **({KEY: partials} if partials else {})})
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
                                      f"{redact(str(exc))}") from None
            log.warning("write of shard %s failed (attempt %d/%d), retrying in %.1f s", shard, attempt,
                        config.write_retries, delay)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
    raise AssertionError("unreachable")


def redact(text: str) -> str:
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "HF_TOKEN"):
        secret = os.environ.get(name)
        if secret:
            text = text.replace(secret, "***")
    return text

"""The candidate shard format, shared by the floor that writes it (`job.shards`, one shard per actor
call) and the one that reads it (`results`): the rows' schema, and which shards under a run's
candidates directory are committed whole (their Parquet footers), read in parallel."""
from __future__ import annotations

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq

from . import storage

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
    ("group", pa.string()),  # the instances scored together (CulturalBench's question); null: alone
])


def report_damaged(damaged: dict[str, str]) -> None:
    """Log each damaged shard: a run writes them again."""
    for name, reason in sorted(damaged.items()):
        log.warning("shard %s is damaged (%s): it will be run again", name, reason)


def intact_footers(directory: str) -> dict[str, dict[str, str]]:
    """The footers of every committed shard under a candidates directory, for reading a run's results:
    ValueError if one is damaged (a rerun of the job writes it again) or there is none."""
    footers, damaged = committed_footers(directory)
    if damaged:
        name = min(damaged)
        raise ValueError(f"{len(damaged)} damaged candidate shard(s) under {directory} (e.g. {name}.parquet: "
                         f"{damaged[name]}); rerun the job to write them again")
    if not footers:
        raise ValueError(f"no committed candidate shards under {directory}")
    return footers


def inspect_committed(directory: str) -> tuple[dict[str, str | None], dict[str, str]]:
    """(committed shard -> its config digest, damaged shard -> why) under a candidates directory."""
    footers, damaged = committed_footers(directory)
    return {name: meta.get("xtp_config_digest") for name, meta in footers.items()}, damaged


def committed_footers(directory: str) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """(committed shard -> its footer's key-value metadata, damaged shard -> why) under a candidates
    directory, the footers read in parallel (one ranged read each on object storage).

    A shard counts as committed only if its Parquet footer reads and holds the row count recorded at
    commit (`xtp_rows`); a truncated or foreign file is damaged. For shards of older versions, without
    `xtp_config_digest`, the digest is read from the first row's `config` column."""
    from concurrent.futures import ThreadPoolExecutor

    names = [n[:-len(".parquet")] for n in storage.list_names(directory) if n.endswith(".parquet")]
    fs, path = storage.resolve(directory)

    def inspect(name: str) -> tuple[str, dict | None, str | None]:
        uri = f"{path}/{name}.parquet"
        try:
            metadata = pq.read_metadata(uri, filesystem=fs)
        except (OSError, pa.ArrowInvalid) as exc:
            return name, None, f"unreadable Parquet footer: {str(exc).splitlines()[0][:200]}"
        meta = {k.decode(): v.decode() for k, v in (metadata.metadata or {}).items() if k != b"ARROW:schema"}
        meta["num_rows"] = str(metadata.num_rows)
        if "xtp_rows" in meta and int(meta["xtp_rows"]) != metadata.num_rows:
            return name, None, f"{metadata.num_rows} rows where {meta['xtp_rows']} were committed"
        if "xtp_config_digest" not in meta and metadata.num_rows and "config" in metadata.schema.names:
            try:
                first = pq.ParquetFile(uri, filesystem=fs).read_row_group(0, columns=["config"]).column(0)[0]
                meta["xtp_config_digest"] = json.loads(first.as_py()).get("digest")
            except (OSError, pa.ArrowInvalid, KeyError, ValueError) as exc:
                return name, None, f"unreadable rows: {str(exc).splitlines()[0][:200]}"
        return name, meta, None

    footers, damaged = {}, {}
    with ThreadPoolExecutor(max_workers=16) as pool:
        for name, meta, reason in pool.map(inspect, names):
            if reason is None:
                footers[name] = meta
            else:
                damaged[name] = reason
    return footers, damaged

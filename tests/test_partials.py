"""Per-shard partials merged == the plain definition over every row (pandas), number for number, on
mixed tasks and splits, two modules and 80 layers; a shard without partials; duplicates refused."""
import json
import shutil
import threading
import time

import pyarrow.parquet as pq
import pytest

from xtp_ray.job.config import RunConfig
from xtp_ray.job.shards import write_shard
from xtp_ray.results.aggregation import aggregate_merged, aggregate_run, collect_partials, in_order
from xtp_ray.results.partials import KEY, DuplicateError
from xtp_ray.results.rows import aggregate_frame, read_rows
from xtp_ray.results.synthetic import synthetic_shard

DIAGONAL_80 = [(i, j) for i in range(80) for j in range(80) if abs(i - j) <= 2 or j == 0]


def _run(tmp_path):
    """A run of committed shards, through the job's own commit (partials in each footer)."""
    config = RunConfig(output=str(tmp_path / "out"), run_id="night")
    plan = [  # (task, split, lang, instances, layers, modules, cells)
        ("xnli", "sample", "sw", range(0, 5), 6, ("ffn", "attn"), None),
        ("xnli", "sample", "sw", range(5, 9), 6, ("ffn", "attn"), None),  # the same group, a second shard
        ("xnli", "unseen", "sw", range(0, 6), 6, ("ffn", "attn"), None),
        ("xnli", "sample", "de", range(0, 4), 6, ("ffn", "attn"), None),
        ("xnli", "unseen", "de", range(0, 3), 6, ("ffn", "attn"), [(i, 0) for i in range(6)]),  # target-first only
        ("xquad", "sample", "de", range(0, 4), 6, ("ffn",), None),  # EM and F1
        ("globalopinionqa", "sample", "en", range(0, 3), 6, ("attn",), None),  # JS similarity
        ("xcopa", "sample", "zh", range(0, 3), 80, ("ffn",), DIAGONAL_80),  # 80 layers: bitsets past 64 bits
    ]
    for k, (task, split, lang, instances, layers, modules, cells) in enumerate(plan):
        table = synthetic_shard(task, split, lang, instances, layers, modules, cells, seed=k, run_id="night",
                                config=json.dumps({"digest": config.digest()}))
        write_shard(config, f"{task}-{split}-{lang}-{instances.start:05d}", table, [])
    return config, str(tmp_path / "out" / "night")


def test_partials_merged_equal_the_plain_definition_over_every_row(tmp_path):
    _, run_uri = _run(tmp_path)
    plain = aggregate_frame(read_rows(run_uri))
    merged, info = collect_partials(run_uri)
    assert info["from_rows"] == 0 and info["committed"] == 8
    assert aggregate_merged(merged) == plain
    rows, info = collect_partials(run_uri, from_candidates=True)
    assert info["from_rows"] == 8
    assert aggregate_merged(rows) == plain
    # the structure is really there: 80 layers, metrics, target-first applied on unseen
    assert plain["tables"]["xcopa/sample/ffn"]["by_lang"]["zh"]["num_layers"] == 80
    assert 79 in plain["tables"]["xcopa/sample/ffn"]["by_lang"]["zh"]["per_source_layer"]
    assert set(plain["tables"]["xquad/sample/ffn"]["by_lang"]["de"]["vanilla_metrics"]) == {"em", "f1"}
    xquad = plain["tables"]["xquad/sample/ffn"]["by_lang"]["de"]
    assert set(xquad["best_cell_metrics"]) == set(xquad["upper_bound_metrics"]) == {"em", "f1"}  # compared above
    assert "js_similarity" in plain["tables"]["globalopinionqa/sample/attn"]["by_lang"]["en"]["upper_bound_metrics"]
    assert "js_similarity" in plain["tables"]["globalopinionqa/sample/attn"]["by_lang"]["en"]["vanilla_metrics"]
    assert {e["lang"] for e in plain["target_first"] if "unseen_applied" in e} == {"sw", "de"}


def test_a_shard_without_partials_is_summarised_from_its_rows(tmp_path):
    _, run_uri = _run(tmp_path)
    plain = aggregate_frame(read_rows(run_uri))
    shard = tmp_path / "out" / "night" / "candidates" / "xnli-sample-sw-00005.parquet"
    table = pq.read_table(shard)
    meta = {k: v for k, v in table.schema.metadata.items() if k != KEY.encode()}
    pq.write_table(table.replace_schema_metadata(meta), shard)  # as an older version wrote it
    merged, info = collect_partials(run_uri)
    assert info["from_rows"] == 1
    assert aggregate_merged(merged) == plain


def test_partials_of_an_older_version_are_read_from_the_shards_rows(tmp_path):
    """Version 1 partials lack the metrics' per-cell sums: such a shard is summarised from its rows, so an old
    run's report has every figure (EM/F1 best cell and upper bound included)."""
    _, run_uri = _run(tmp_path)
    plain = aggregate_frame(read_rows(run_uri))
    shard = tmp_path / "out" / "night" / "candidates" / "xquad-sample-de-00000.parquet"
    table = pq.read_table(shard)
    partials = json.loads(table.schema.metadata[KEY.encode()])
    assert partials["version"] == 2
    partials["version"] = 1
    for group in partials["groups"].values():  # what version 1 wrote: no metric sums, no per-instance maxima
        del group["metric_cells"]
        group["instances"] = {i: o[:6] for i, o in group["instances"].items()}
    meta = {**table.schema.metadata, KEY.encode(): json.dumps(partials).encode()}
    pq.write_table(table.replace_schema_metadata(meta), shard)
    merged, info = collect_partials(run_uri)
    assert info["from_rows"] == 1
    assert aggregate_merged(merged) == plain
    assert set(plain["tables"]["xquad/sample/ffn"]["by_lang"]["de"]["upper_bound_metrics"]) == {"em", "f1"}


def test_an_instance_in_two_shards_is_refused(tmp_path, capsys):
    _, run_uri = _run(tmp_path)
    candidates = tmp_path / "out" / "night" / "candidates"
    shutil.copy(candidates / "xnli-sample-sw-00005.parquet", candidates / "xnli-sample-sw-00099.parquet")
    with pytest.raises(DuplicateError, match="xnli/sample/sw/5 .* is in two shards"):
        collect_partials(run_uri)
    from xtp_ray.cli import main

    assert main(["aggregate", "--output", str(tmp_path / "out"), "--run-id", "night"]) == 2
    assert "is in two shards" in capsys.readouterr().err


def test_a_shard_with_a_row_twice_is_refused_when_written(tmp_path):
    import pyarrow as pa

    config = RunConfig(output=str(tmp_path / "out"), run_id="night")
    table = synthetic_shard("xnli", "sample", "sw", range(2), 4)
    with pytest.raises(DuplicateError, match="duplicate candidate rows"):
        write_shard(config, "xnli-sample-sw-00000", pa.concat_tables([table, table.slice(3, 1)]), [])
    assert not (tmp_path / "out" / "night" / "candidates").exists()


def test_aggregate_while_running_says_how_many_shards_are_missing(tmp_path, caplog):
    config, run_uri = _run(tmp_path)
    manifest = {"run_id": "night", "shards": ["xnli-sample-sw-00000", "xnli-sample-sw-00005", "later-00000",
                                              "later-00001"], "attempts": [{"started": 1.0, "status": "running"}]}
    (tmp_path / "out" / "night" / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level("WARNING", logger="xtp_ray"):
        report = aggregate_run(config.output, "night")
    assert report["shards"] == {"committed": 8, "from_rows": 0, "planned": 4, "missing": 2}
    assert any("2 not committed yet" in r.getMessage() for r in caplog.records)


def test_shards_summarised_ahead_come_back_in_order_and_at_most_ahead_at_once():
    """`in_order` (the --from-candidates read-ahead): results in the names' order although later names
    finish first, never more than `ahead` running at once, and an error surfaces at its name's turn."""
    running, most, lock = 0, 0, threading.Lock()

    def work(name):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.002 * (10 - int(name)))  # later names finish sooner
        with lock:
            running -= 1
        if name == "7":
            raise ValueError("shard 7 is bad")
        return int(name) * 10

    got = []
    with pytest.raises(ValueError, match="shard 7"):
        for name, value in in_order([str(k) for k in range(10)], work, ahead=3):
            got.append((name, value))
    assert got == [(str(k), k * 10) for k in range(7)]
    assert most == 3

"""Candidates on a real S3-compatible server (moto's, on 127.0.0.1), data read from it too."""
import json

import pyarrow.fs as pafs
import pytest

ray = pytest.importorskip("ray")
boto3 = pytest.importorskip("boto3")

from support import s3_environment  # noqa: E402

from xtp_ray import storage  # noqa: E402
from xtp_ray.job.config import RunConfig, validate  # noqa: E402
from xtp_ray.job.run import run_job  # noqa: E402
from xtp_ray.results.aggregation import aggregate_run  # noqa: E402
from xtp_ray.tasks import bundled_root  # noqa: E402

FAKE_SECRET = "xtp-test-secret-Zq8v3Lw0PzK2"


@pytest.fixture(scope="module")
def s3():
    with s3_environment(FAKE_SECRET, "xtp") as server:  # before ray.init, so the workers see them
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        yield server
        ray.shutdown()


def _upload_xnli_sample(langs=("en", "sw")):
    fs, _ = storage.resolve("s3://xtp/data")
    local = pafs.LocalFileSystem()
    base = f"{bundled_root()}/xtransplant_release/XNLI/XNLI_sample"
    for sub in ("split", "ans", "ans_lang"):
        for lang in langs:
            pafs.copy_files(f"{base}/{sub}/{lang}.json", f"xtp/data/XNLI/XNLI_sample/{sub}/{lang}.json",
                            source_filesystem=local, destination_filesystem=fs)


def test_candidates_and_report_on_s3(s3, capfd):
    _upload_xnli_sample()
    config = RunConfig(model="tiny:LlamaForCausalLM:3", tasks=["xnli"], langs=["sw"], limit=4,
                       data_root="s3://xtp/data", output="s3://xtp/runs", run_id="s3run", shard_size=2,
                       scoring="logprobs")
    validate(config)
    summary = run_job(config)
    assert summary["instances"] == 4
    names = storage.list_names("s3://xtp/runs/s3run/candidates")
    assert names == ["xnli-sample-sw-00000.parquet", "xnli-sample-sw-00001.parquet"]
    report = aggregate_run("s3://xtp/runs", "s3run")
    table = report["tables"]["xnli/sample/ffn"]
    assert table["instances"] == 4 and table["languages"] == ["sw"]
    stored = json.loads(storage.read_text("s3://xtp/runs/s3run/report/report.json"))
    assert stored["tables"]["xnli/sample/ffn"]["by_lang"]["sw"]["upper_bound"] == table["by_lang"]["sw"]["upper_bound"]
    assert storage.exists("s3://xtp/runs/s3run/report/heatmaps/xnli-sample-ffn-sw.png")

    # the secret is nowhere: not in any object written, not in the logs
    client = boto3.client("s3", endpoint_url=s3.endpoint)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="xtp", Prefix="runs/")["Contents"]]
    assert any(k.endswith("manifest.json") for k in keys)
    for key in keys:
        assert FAKE_SECRET.encode() not in client.get_object(Bucket="xtp", Key=key)["Body"].read(), key
    captured = capfd.readouterr()
    assert FAKE_SECRET not in captured.out + captured.err


def test_a_model_on_s3_is_copied_for_loading_and_the_copy_removed(s3, tiny_model_dir, monkeypatch, tmp_path):
    import tempfile

    from xtp_ray.job.actor import load_for_run

    fs, _ = storage.resolve("s3://xtp/models")
    pafs.copy_files(str(tiny_model_dir), "xtp/models/tiny", source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the copy goes, watched here
    engine, revision = load_for_run(RunConfig(model="s3://xtp/models/tiny"))
    assert engine.num_layers == 4 and revision.startswith("local-")
    assert list(tmp_path.iterdir()) == []  # the per-actor copy is gone once the weights are loaded

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from xtp_ray.engine.tiny import save_tiny_model, tokenizer_corpus, train_tokenizer  # noqa: E402

# Markers per test module: `ray` (starts Ray), `vllm` (starts a vLLM engine), `slow` (30 s or more on the
# 2-core machine, from `pytest --durations=0` of the whole suite). `pytest -m "not slow"` is a loop of a few
# minutes (443 tests in 4.5 min with another job on the machine); `make test` runs everything.
MODULE_MARKERS = {
    "test_autoscaler": {"ray", "slow"}, "test_bad_input_runs": {"ray", "slow"}, "test_cluster": {"ray", "slow"},
    "test_custom_task": {"ray"}, "test_job_submit": {"ray", "slow"}, "test_lease": {"ray", "slow"},
    "test_left_out": {"ray", "slow"}, "test_nightly": {"ray", "slow"}, "test_object_storage": {"ray"},
    "test_pipeline": {"ray", "slow"}, "test_placement": {"ray"}, "test_reliability": {"ray", "slow"},
    "test_vllm_engine": {"vllm"}, "test_vllm_families": {"vllm", "slow"}, "test_vllm_job": {"ray", "vllm", "slow"},
    "test_vllm_tp": {"vllm", "slow"}, "test_memory": {"slow"}, "test_schedule": {"slow"},
    "test_families": {"slow"},
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        for marker in sorted(MODULE_MARKERS.get(item.module.__name__.rsplit(".", 1)[-1], ())):
            item.add_marker(getattr(pytest.mark, marker))


@pytest.fixture(scope="session")
def tokenizer():
    """A byte-level BPE trained here on the bundled sample prompts (no hub)."""
    return train_tokenizer(tokenizer_corpus(), 512)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 4-layer Llama saved with save_pretrained (model + tokenizer), as users give one."""
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", num_layers=4)


@pytest.fixture(scope="module")
def ray_local():
    """One in-process Ray per test module (Ray takes 5-10 s to start here)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from xtp_ray.engine.tiny import save_tiny_model, tokenizer_corpus, train_tokenizer  # noqa: E402


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

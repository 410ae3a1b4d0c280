"""The memory fit before launch, from a model's config alone (config-only directories of Llama-2 7B and
70B, copies of ../shared/models/configs in tests/data/models): the jobs' configs on 80 GB GPUs."""
from pathlib import Path

import pytest

from xtp_ray.cli import main
from xtp_ray.engine.footprint import GB, need_per_gpu, parameter_count
from xtp_ray.job.config import load_config
from xtp_ray.job.fit import GPU_MEMORY_GB, check_fit
from xtp_ray.job.placement import smallest_gpu
from xtp_ray.job.planning import read_model_config

ROOT = Path(__file__).resolve().parents[1]
MODELS = Path(__file__).parent / "data" / "models"
LLAMA_70B = str(MODELS / "Llama-2-70b-chat-hf")
LLAMA_7B = str(MODELS / "Llama-2-7b-chat-hf")


def _config(job: str, **flags):
    import argparse

    from xtp_ray.job.config import add_flags

    parser = argparse.ArgumentParser()
    add_flags(parser)
    argv = ["--config", str(ROOT / "jobs" / job)]
    for name, value in flags.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return load_config(parser.parse_args(argv))


def test_parameters_are_counted_on_the_models_own_modules():
    # the published sizes (shared/models/configs/README.md): 6.74 B and 68.98 B
    assert parameter_count(read_model_config(_config("paper.yaml", model=LLAMA_7B))) == 6_738_415_616
    assert parameter_count(read_model_config(_config("llama70b.yaml", model=LLAMA_70B))) == 68_976_648_192


def test_a_shape_transformers_cannot_build_is_estimated_within_a_few_percent():
    from xtp_ray.engine.footprint import estimate_parameters

    for name, exact in (("Llama-2-7b-chat-hf", 6_738_415_616), ("Llama-2-70b-chat-hf", 68_976_648_192)):
        model_config = read_model_config(_config("paper.yaml", model=str(MODELS / name)))
        assert estimate_parameters(model_config) == pytest.approx(exact, rel=0.001)
        unknown = {**model_config, "model_type": "no-such-model"}  # e.g. remote code
        assert parameter_count(unknown) == estimate_parameters(model_config)


def test_llama70b_is_refused_on_one_80gb_gpu_in_one_line(tmp_path, capsys):
    code = main(["run", "--config", str(ROOT / "jobs" / "llama70b.yaml"), "--model", LLAMA_70B,
                 "--num-gpus-per-actor", "1", "--gpu-memory-gb", "80", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    [line] = [line for line in err.splitlines() if ": error:" in line]
    # the model's size, the need per GPU, the GPU's memory, what to do
    assert "68.98B parameters, 138.0 GB of bfloat16 weights" in line, line
    assert "one actor needs 141.5 GB per GPU (138.0 GB weights over 1 GPU(s) + 3.6 GB for the engine" in line, line
    assert "more than the 71.0 GB usable of a 80 GB GPU (gpu_memory_gb)" in line and "raise num_gpus_per_actor" in line, line
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_llama70b_fits_four_80gb_gpus_and_its_own_node_type():
    model_config = read_model_config(_config("llama70b.yaml", model=LLAMA_70B))
    four = _config("llama70b.yaml", model=LLAMA_70B, num_gpus_per_actor=4)
    assert "fits 80 GB GPUs" in check_fit(four, model_config, 80, "gpu_memory_gb")
    need = need_per_gpu(model_config, "vllm", "bfloat16", 4, 16, None, 20)
    assert need.weights == pytest.approx(68_976_648_192 * 2 / 4)
    assert 34 * GB < need.total < 0.9 * 80 * GB  # weights / 4 and a little: within vLLM's 90 %
    eight = _config("llama70b.yaml", model=LLAMA_70B)  # as shipped: 8 x A100 (cluster.yaml gpu_70b)
    assert "fits 40 GB GPUs" in check_fit(eight, model_config, GPU_MEMORY_GB["A100"], "gpu_70b: A100")
    two = _config("llama70b.yaml", model=LLAMA_70B, num_gpus_per_actor=2)
    with pytest.raises(ValueError, match="69.0 GB weights over 2 GPU"):
        check_fit(two, model_config, 40, "gpu_memory_gb")


def test_a_7b_fits_one_80gb_gpu_and_the_l40s_of_cluster_yaml():
    paper = _config("paper.yaml", model=LLAMA_7B)  # the hf engine, one GPU, batch 8
    model_config = read_model_config(paper)
    assert "fits 80 GB GPUs" in check_fit(paper, model_config, 80, "gpu_memory_gb")
    assert "fits 48 GB GPUs" in check_fit(paper, model_config, GPU_MEMORY_GB["L40S"], "gpu_7b: L40S")
    # the prompts' bound decides the K/V: at the model's whole context, batch 8 is too much for 48 GB
    whole = _config("paper.yaml", model=LLAMA_7B, max_prompt_tokens="null")
    with pytest.raises(ValueError, match="prompts of 4076 tokens.*lower batch_size or max_prompt_tokens"):
        check_fit(whole, model_config, 48, "gpu_memory_gb")
    assert check_fit(paper, None, 80, "x") == "memory fit not checked: a tiny model"
    assert "unknown" in check_fit(paper, model_config, None, "x")


def test_the_smallest_gpu_among_the_places_an_actor_may_go():
    places = {"node a": {"CPU": 8, "GPU": 1, "accelerator_type:L40S": 1},
              "node type big": {"CPU": 96, "GPU": 8, "accelerator_type:A100-80G": 1},
              "node type unnamed": {"CPU": 8, "GPU": 8},
              "node c": {"CPU": 4}}
    assert smallest_gpu(places, {"CPU": 1, "GPU": 1}, GPU_MEMORY_GB) == (48, "node a: L40S")
    assert smallest_gpu(places, {"CPU": 32, "GPU": 8}, GPU_MEMORY_GB) == (80, "node type big: A100-80G")
    assert smallest_gpu(places, {"CPU": 1, "GPU": 8}, {})[0] is None

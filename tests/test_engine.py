"""The fast engine against the hook-based reference, cell for cell.

Tolerances: fp32 + eager attention. The engine runs the cells as rows against a
shared prefix, splitting each softmax into a prefix part and an own part merged by
log-sum-exp, so sums are reassociated: logits differ by float rounding only (~1e-5
seen), well inside the SPEC's 1e-4. Greedy tokens must be identical.
"""
from collections import Counter

import pytest
import torch

from xtp_ray.cells import VANILLA, Cell, parse_cells
from xtp_ray.engine import hf, reference
from xtp_ray.engine.architectures import MODULES, REGISTRY, TEXT_MODEL_OF, UnknownArchitectureError, lookup
from xtp_ray.engine.capture import capture_last_token, replace_rows
from xtp_ray.engine.cascade import KERNELS
from xtp_ray.engine.tiny import TINY_CONFIGS, TINY_MULTIMODAL, build_tiny_model

LOGIT_TOL = 1e-4
DONORS = [
    "Premise: The girl squeezed her nose.\nHypothesis: the baby soiled his diaper.",
    "Human: What do you think is the relationship",
    "Options: (1) Entail (2) Neutral",
]
RECIPIENTS = [
    "Nguzo: Msichana alifinya pua yake.",
    "Binadamu: Unafikiri kuna uhusiano gani kati ya dhana na dhana?\nNguzo: Kwa hivyo, sina hadithi maalum.",
    "Chaguo: (1)",
]
OPTIONS = [[[40], [41, 42]], [[43], [44]], [[45], [46], [47]]]


def _model(architecture, tokenizer, layers=3, **overrides):
    return build_tiny_model(architecture, len(tokenizer), num_layers=layers, **overrides)


def assert_same(fast, slow, check_tokens=True):
    assert len(fast) == len(slow)
    for fast_row, slow_row in zip(fast, slow):
        assert [r.cell for r in fast_row] == [r.cell for r in slow_row]
        for f, s in zip(fast_row, slow_row):
            if check_tokens:
                assert f.token_ids == s.token_ids, f.cell
            assert torch.allclose(f.logits, s.logits, atol=LOGIT_TOL, rtol=0), \
                (f.cell, (f.logits - s.logits).abs().max())
            if s.option_logprobs is not None:
                assert f.option_logprobs == pytest.approx(s.option_logprobs, abs=LOGIT_TOL)


def test_registry_covers_every_tiny_architecture():
    assert set(TINY_CONFIGS) | set(TINY_MULTIMODAL) == set(REGISTRY) | set(TEXT_MODEL_OF)


# The families of the first registry; the later ones (MoE, gpt-oss, DeepSeek-V3, Llama 4, Gemma 3, OLMo 2)
# are held to the reference in tests/test_families.py, on a smaller grid.
DENSE = ["GPT2LMHeadModel", "Gemma2ForCausalLM", "LlamaForCausalLM", "MistralForCausalLM", "Phi3ForCausalLM",
         "Qwen2ForCausalLM", "Qwen3ForCausalLM"]


@pytest.mark.parametrize("architecture", DENSE)
@pytest.mark.parametrize("module", MODULES)
def test_fast_equals_reference_full_grid(architecture, module, tokenizer):
    model = _model(architecture, tokenizer)
    cells = parse_cells("full", 3)
    # three instances of different lengths in one batch: left padding is exercised;
    # a chunk of 4 cells splits the 10 rows of each instance unevenly
    fast = hf.run_grid(model, tokenizer, DONORS, RECIPIENTS, cells, module, max_new_tokens=6,
                           cells_per_chunk=4, option_token_ids=OPTIONS, keep_logits=True)
    slow = reference.run_grid(model, tokenizer, DONORS, RECIPIENTS, cells, module, max_new_tokens=6,
                              option_token_ids=OPTIONS)
    assert_same(fast, slow)
    # the grid is not trivial: transplants change answers, and differ between cells
    for row in fast:
        vanilla = row[0].logits
        assert any(not torch.allclose(r.logits, vanilla, atol=1e-3) for r in row[1:])
    assert len({tuple(r.token_ids) for row in fast for r in row}) > 3


@pytest.mark.parametrize("architecture", ["LlamaForCausalLM", "Gemma2ForCausalLM", "GPT2LMHeadModel"])
def test_score_only_equals_reference(architecture, tokenizer):
    model = _model(architecture, tokenizer)
    cells = parse_cells("full", 3)
    fast = hf.run_grid(model, tokenizer, DONORS, RECIPIENTS, cells, "ffn", max_new_tokens=0,
                           option_token_ids=OPTIONS, keep_logits=True)
    slow = reference.run_grid(model, tokenizer, DONORS, RECIPIENTS, cells, "ffn", max_new_tokens=0,
                              option_token_ids=OPTIONS)
    assert all(r.token_ids == [] for row in fast for r in row)
    assert_same(fast, slow)


@pytest.mark.parametrize("architecture", ["LlamaForCausalLM", "Qwen3ForCausalLM", "Phi3ForCausalLM"])
def test_batched_with_padding_equals_one_at_a_time(architecture, tokenizer):
    model = _model(architecture, tokenizer, layers=4)
    cells = parse_cells("full", 4)
    batched = hf.run_grid(model, tokenizer, DONORS, RECIPIENTS, cells, "attn", 5, keep_logits=True)
    for b in range(len(DONORS)):
        single = hf.run_grid(model, tokenizer, DONORS[b:b + 1], RECIPIENTS[b:b + 1], cells, "attn", 5,
                                 cells_per_chunk=3, keep_logits=True)
        assert_same([batched[b]], single)


def test_cell_lists_equal_their_cells_of_the_full_grid(tokenizer):
    model = _model("LlamaForCausalLM", tokenizer, layers=4)
    full = hf.run_grid(model, tokenizer, DONORS, RECIPIENTS, parse_cells("full", 4), "ffn", 4, keep_logits=True)
    by_cell = [{r.cell: r for r in row} for row in full]
    for spec in ("target-first", "3:0,0:3,2:2", "-1:0"):
        part = hf.run_grid(model, tokenizer, DONORS, RECIPIENTS, parse_cells(spec, 4), "ffn", 4, keep_logits=True)
        assert_same(part, [[by_cell[b][r.cell] for r in row] for b, row in enumerate(part)])


@pytest.mark.parametrize("donors", [DONORS[:2], [DONORS[0] * 3, DONORS[2]]])  # shorter / longer than the recipients
def test_gemma2_sliding_window_prompts_longer_than_the_window(tokenizer, donors):
    """Prefix keys that fell out of a sliding layer's window are masked by position (and the
    prefill cache keeps only the window): prompts longer than the window equal the reference, also
    when the donors, which share the prefill's forward, are the longer rows (the recipients' rows carry
    extra left padding and the sliding layers keep the window of the donors' width)."""
    model = _model("Gemma2ForCausalLM", tokenizer, sliding_window=12)
    cells = parse_cells("full", 3)
    recipients = [RECIPIENTS[0] * 2, RECIPIENTS[2]]  # ~30 and ~6 tokens: one beyond 12
    assert len(tokenizer(recipients[0]).input_ids) > 2 * 12
    if donors[0] != DONORS[0]:
        assert len(tokenizer(donors[0]).input_ids) > len(tokenizer(recipients[0]).input_ids) + 12
    fast = hf.run_grid(model, tokenizer, donors, recipients, cells, "ffn", 5, cells_per_chunk=4,
                           keep_logits=True)
    slow = reference.run_grid(model, tokenizer, donors, recipients, cells, "ffn", 5)
    assert_same(fast, slow)
    with pytest.raises(ValueError, match="sliding window"):  # a row's own tokens must fit the window
        hf.run_grid(model, tokenizer, DONORS[:1], RECIPIENTS[:1], cells, "ffn", 11)


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_are_gone_after_an_exception(tokenizer):
    model = _model("LlamaForCausalLM", tokenizer)
    ids = tokenizer(["hello"], return_tensors="pt").input_ids
    with pytest.raises(RuntimeError, match="boom"):
        with capture_last_token(model, "attn_ref", [0, 1, 2]):
            assert _hook_count(model) == 6
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        with replace_rows(model, "ffn", {1: (torch.tensor([0]), torch.zeros(1, 64))}):
            assert _hook_count(model) == 1
            raise RuntimeError("boom")
    assert _hook_count(model) == 0

    # an exception raised inside the model mid-grid leaves no engine hook behind
    def explode(*_):
        raise RuntimeError("boom in forward")

    bomb = model.model.layers[2].register_forward_hook(explode)
    with pytest.raises(RuntimeError, match="boom in forward"):
        hf.run_grid(model, tokenizer, DONORS, RECIPIENTS, parse_cells("full", 3), "ffn", 2)
    bomb.remove()
    assert _hook_count(model) == 0
    model(ids)  # and the model still runs


def test_bfloat16_runs_and_agrees_on_decisions(tokenizer):
    """bf16 keeps 8 bits of mantissa: the engine's reassociated sums and generate's
    differ by ~1e-2 in logits, so only decisions are compared, on cells whose top-2
    margin exceeds that noise (near-ties may legitimately flip)."""
    model = _model("LlamaForCausalLM", tokenizer, layers=4).to(torch.bfloat16)
    cells = parse_cells("full", 4)
    fast = hf.run_grid(model, tokenizer, DONORS, RECIPIENTS, cells, "ffn", 0, keep_logits=True)
    slow = reference.run_grid(model, tokenizer, DONORS, RECIPIENTS, cells, "ffn", 0)
    compared = 0
    for fast_row, slow_row in zip(fast, slow):
        for f, s in zip(fast_row, slow_row):
            top2 = s.logits.topk(2).values
            if top2[0] - top2[1] > 0.1:
                compared += 1
                assert f.logits.argmax() == s.logits.argmax(), f.cell
    assert compared >= len(cells)  # most cells are decisive enough to compare


def test_unknown_architecture_fails_fast_with_how_to_add_one():
    from transformers import LlamaConfig

    config = LlamaConfig(architectures=["FancyNewForCausalLM"])
    with pytest.raises(UnknownArchitectureError, match="FancyNewForCausalLM.*REGISTRY"):
        lookup(config)


def test_parse_cells():
    assert parse_cells("full", 2) == [Cell(0, 0), Cell(1, 0), Cell(0, 1), Cell(1, 1)]
    assert parse_cells("target-first", 3) == [Cell(0, 0), Cell(1, 0), Cell(2, 0)]
    assert parse_cells("-1:0, 1:2", 3) == [Cell(2, 0), Cell(1, 2)]
    for bad, message in (("3:0", "out of range"), ("a:b", "bad cell"), ("1:1,1:1", "duplicate")):
        with pytest.raises(ValueError, match=message):
            parse_cells(bad, 3)
    assert VANILLA not in parse_cells("full", 3)


def test_cells_per_chunk_bounds_every_forward(tokenizer):
    """Peak memory follows the widest forward: no forward may carry more than a chunk of cells."""
    model = _model("LlamaForCausalLM", tokenizer, layers=4)
    widths = []
    handle = model.register_forward_pre_hook(
        lambda _m, _args, kwargs: widths.append(kwargs["input_ids"].shape), with_kwargs=True)
    try:
        hf.run_grid(model, tokenizer, DONORS, RECIPIENTS, parse_cells("full", 4), "ffn", 3, cells_per_chunk=5)
    finally:
        handle.remove()
    assert widths[0][0] == 2 * 3  # one forward for the 3 donors and the 3 recipient prefixes
    cell_forwards = [shape for shape in widths[1:]]
    assert len(cell_forwards) == 4 * 3  # ceil(17 / 5) chunks x 3 steps
    assert max(shape[0] for shape in cell_forwards) == 3 * 5  # rows: 3 instances x 5 cells
    assert all(shape[1] == 1 for shape in cell_forwards)  # one token per row: the prefix is never re-fed


def test_one_token_recipient_on_the_fused_path_equals_reference(tokenizer):
    """A recipient of one token (BOS) has an empty prefix: the fused CPU kernel must not see zero keys
    (it dies with SIGFPE there), alone and padded in a batch with a longer prompt."""
    model = _model("LlamaForCausalLM", tokenizer, layers=3)
    cells = parse_cells("full", 3)
    for recipients in ([""], ["", RECIPIENTS[0]]):
        donors = DONORS[:len(recipients)]
        assert len(tokenizer(recipients[0]).input_ids) == 1
        fast = hf.run_grid(model, tokenizer, donors, recipients, cells, "ffn", 3, keep_logits=True)
        assert_same(fast, reference.run_grid(model, tokenizer, donors, recipients, cells, "ffn", 3))


def test_own_tokens_through_the_fused_kernel_equal_reference(tokenizer):
    """Both own-token kernels (`own_kernel`: the fused kernel, the default, and `bmm`s): the rows' own part
    as one fused problem per row and KV head, GQA and padding included, equals the reference."""
    model = _model("Qwen2ForCausalLM", tokenizer, layers=3)
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # GQA: G > 1 queries per problem
    cells = parse_cells("full", 3)
    fused_calls = {}
    for kernel in ("matmul", "fused"):
        KERNELS.reset()
        fast = hf.HFEngine(model, tokenizer, own_kernel=kernel).run_grid(DONORS, RECIPIENTS, cells, "ffn", 5,
                                                                         cells_per_chunk=4, keep_logits=True)
        fused_calls[kernel] = KERNELS.fused
        assert KERNELS.fallbacks == 0
        assert_same(fast, reference.run_grid(model, tokenizer, DONORS, RECIPIENTS, cells, "ffn", 5))
    # the prefix part is fused either way; "fused" adds the own part of every attention call
    assert fused_calls["matmul"] > 0 and fused_calls["fused"] == 2 * fused_calls["matmul"]


@pytest.mark.parametrize("total,most,sizes", [(1025, 1024, [513, 512]), (17, 5, [5, 4, 4, 4]), (8, 8, [8]),
                                              (3, 10, [3]), (10, 1, [1] * 10)])
def test_chunks_are_balanced_never_a_small_tail(total, most, sizes):
    spans = hf.balanced_chunks(total, most)
    assert [end - start for start, end in spans] == sizes
    assert spans[0][0] == 0 and spans[-1][1] == total
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


def test_at_most_one_transfer_each_way_per_decode_step(tokenizer):
    """The decode loop's host<->device traffic, counted where it happens (`transfers.py`): one
    device->host transfer per step (the tokens) and at most one host->device (all layers' plans)."""
    from xtp_ray.engine import transfers

    model = _model("LlamaForCausalLM", tokenizer, layers=4)
    model.generation_config.eos_token_id = None  # every row decodes every step
    tokenizer_eos = tokenizer.eos_token
    tokenizer.eos_token = None
    try:
        before = transfers.COUNTS.snapshot()
        hf.run_grid(model, tokenizer, DONORS, RECIPIENTS, parse_cells("full", 4), "ffn", 8)
        counts = transfers.COUNTS.since(before)
    finally:
        tokenizer.eos_token = tokenizer_eos
    assert counts["to_host"] == 8  # steps: one each
    assert counts["to_device"] <= 8  # the first plan + at most one per decode step (fewer when no group split)


def test_greedy_picks_the_first_highest_token_as_argmax_does():
    """`hf.greedy` (max's indices, faster on a CPU) equals argmax, ties included (both take the first)."""
    logits = torch.tensor([[0.0, 2.0, 2.0, 1.0], [5.0, 5.0, 5.0, 5.0], [-1.0, -3.0, -1.0, -2.0]])
    logits = torch.cat([logits, torch.randn(61, 4).round()])  # many ties among small integers
    assert hf.greedy(logits).tolist() == logits.argmax(-1).tolist()
    assert hf.greedy(logits)[:3].tolist() == [1, 0, 0]


@pytest.mark.parametrize("architecture", ["LlamaForCausalLM", "Qwen2ForCausalLM", "GPT2LMHeadModel"])
def test_decode_forwards_run_ahead_equal_reference(architecture, tokenizer):
    """Speculation (`hf._decode`; on by default only on a GPU), forced on: each decode forward is
    queued on the plans in place before the host has the tokens. Here rows finish mid-way (the stop
    token is one the rows often choose) and groups split after steady steps, so some forwards are kept
    and some run again; tokens equal the reference's and logits agree within LOGIT_TOL, with padding and
    chunks; and without sharing (nothing planned) every forward run ahead is kept."""
    model = _model(architecture, tokenizer, layers=4)
    cells = parse_cells("full", 4)
    first = hf.run_grid(model, tokenizer, DONORS, RECIPIENTS, cells, "ffn", max_new_tokens=10, speculate=False)
    later = Counter(t for row in first for r in row for t in r.token_ids[2:])
    model.generation_config.eos_token_id = later.most_common(3)[2][0]  # a token rows often choose, later on
    before = hf.SPECULATION.snapshot()
    fast = hf.run_grid(model, tokenizer, DONORS, RECIPIENTS, cells, "ffn", max_new_tokens=10,
                       cells_per_chunk=7, keep_logits=True, speculate=True)
    counts = hf.SPECULATION.since(before)
    assert counts["kept"] > 0 and counts["redone"] > 0, counts
    lengths = {len(r.token_ids) for row in fast for r in row}
    assert min(lengths) < 10 and max(lengths) > min(lengths)  # rows finished, at different steps
    assert_same(fast, reference.run_grid(model, tokenizer, DONORS, RECIPIENTS, cells, "ffn", max_new_tokens=10))
    before = hf.SPECULATION.snapshot()
    unshared = hf.run_grid(model, tokenizer, DONORS, RECIPIENTS, cells, "ffn", max_new_tokens=10,
                           keep_logits=True, share=False, speculate=True)
    assert hf.SPECULATION.since(before)["redone"] == 0
    assert_same(unshared, fast)

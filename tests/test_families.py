"""The later families (mixture-of-experts, gpt-oss, DeepSeek-V3, Llama 4, Gemma 3, OLMo 2) against the
hook-based reference, cell for cell, and what the engine refuses.

Tolerances as in tests/test_engine.py: fp32 + eager attention, so the engine (cells as rows against a
shared prefix, each softmax split into a prefix part, an own part, and for gpt-oss the sinks, merged by
log-sum-exp) differs from `generate` only by reassociated float sums (~1e-5 seen on every family here):
logits within the SPEC's 1e-4, greedy tokens identical. MoE routing is a top-k over router logits, so a
near-tie there could flip an expert on rounding alone; none occurs on these seeds (a flip would move a
logit far beyond 1e-4, and the test would show the cell).

The grid is small on purpose: 3 layers (every family's alternation shows in it: sliding/full, chunked/NoPE,
dense/sparse), two instances of different lengths in one batch (left padding; the long one outgrows the
sliding windows and attention chunks of 24 tokens), chunks of 4 cells (rows split unevenly).
"""
import pytest
import torch
from test_engine import DENSE, assert_same
from transformers import AttentionInterface

from xtp_ray.cells import parse_cells
from xtp_ray.engine import cascade, hf, reference
from xtp_ray.engine.architectures import (
    REFUSED,
    RefusedArchitectureError,
    UnknownArchitectureError,
    decoder_layers,
    lookup,
)
from xtp_ray.engine.cascade import IRRELEVANT_ARGUMENTS, UnsupportedAttentionArgument
from xtp_ray.engine.tiny import TINY_CONFIGS, build_tiny_model

FAMILIES = sorted(set(TINY_CONFIGS) - set(DENSE))
DONORS = ["Premise: The girl squeezed her nose.\nHypothesis: the baby soiled his diaper.",
          "Options: (1) Entail (2) Neutral"]
RECIPIENTS = ["Binadamu: Unafikiri kuna uhusiano gani kati ya dhana na dhana?\nNguzo: Kwa hivyo, sina hadithi maalum.",
              "Chaguo: (1)"]
OPTIONS = [[[40], [41, 42]], [[45], [46], [47]]]
LAYERS = 3
NEW_TOKENS = 4


def _model(architecture, tokenizer, **overrides):
    return build_tiny_model(architecture, len(tokenizer), num_layers=LAYERS, **overrides)


def test_the_families_cover_the_later_registry():
    assert set(FAMILIES) == {"Qwen3MoeForCausalLM", "Qwen2MoeForCausalLM", "OlmoeForCausalLM", "MixtralForCausalLM",
                             "GptOssForCausalLM", "DeepseekV3ForCausalLM", "Llama4ForCausalLM",
                             "Gemma3ForCausalLM", "Olmo2ForCausalLM"}


def test_the_long_prompt_outgrows_windows_and_chunks(tokenizer):
    assert len(tokenizer(RECIPIENTS[0]).input_ids) > 2 * 24 > 2 * len(tokenizer(RECIPIENTS[1]).input_ids)


@pytest.mark.parametrize("architecture", FAMILIES)
@pytest.mark.parametrize("module", ["ffn", "attn"])
def test_generation_equals_reference(architecture, module, tokenizer):
    """Greedy tokens, logits at the patched position and option log-probs of every cell."""
    model = _model(architecture, tokenizer)
    cells = parse_cells("full", LAYERS)
    fast = hf.run_grid(model, tokenizer, DONORS, RECIPIENTS, cells, module, max_new_tokens=NEW_TOKENS,
                       cells_per_chunk=4, option_token_ids=OPTIONS, keep_logits=True)
    slow = reference.run_grid(model, tokenizer, DONORS, RECIPIENTS, cells, module, max_new_tokens=NEW_TOKENS,
                              option_token_ids=OPTIONS)
    assert_same(fast, slow)
    for row in fast:  # not trivial: transplants change the logits, and cells differ
        assert any(not torch.allclose(r.logits, row[0].logits, atol=1e-3) for r in row[1:])
    assert len({tuple(r.token_ids) for row in fast for r in row}) > 2


@pytest.mark.parametrize("architecture", FAMILIES)
@pytest.mark.parametrize("module", ["ffn", "attn"])
def test_option_logprobs_equal_reference(architecture, module, tokenizer):
    """The scoring mode without decoding (max_new_tokens=0): option log-probs at the patched position."""
    model = _model(architecture, tokenizer)
    cells = parse_cells("full", LAYERS)
    fast = hf.run_grid(model, tokenizer, DONORS, RECIPIENTS, cells, module, max_new_tokens=0,
                       option_token_ids=OPTIONS, keep_logits=True)
    slow = reference.run_grid(model, tokenizer, DONORS, RECIPIENTS, cells, module, max_new_tokens=0,
                              option_token_ids=OPTIONS)
    assert all(r.token_ids == [] for row in fast for r in row)
    assert_same(fast, slow)


def test_the_tiny_models_have_what_the_families_are_known_for(tokenizer):
    """The grid above exercises each family's peculiarity: without these, a test could pass vacuously."""
    gpt_oss = _model("GptOssForCausalLM", tokenizer)
    assert {layer.self_attn.sliding_window for layer in decoder_layers(gpt_oss)} == {24, None}
    assert gpt_oss.model.layers[0].self_attn.sinks.abs().sum() > 0  # learned sinks, not zeros
    deepseek = _model("DeepseekV3ForCausalLM", tokenizer)
    attention = deepseek.model.layers[0].self_attn
    assert attention.v_head_dim != attention.qk_head_dim
    assert [type(layer.mlp).__name__ for layer in deepseek.model.layers] == ["DeepseekV3MLP", "DeepseekV3MoE",
                                                                          "DeepseekV3MoE"]
    assert deepseek.model.layers[1].mlp.shared_experts is not None
    llama4 = _model("Llama4ForCausalLM", tokenizer)
    assert [layer.is_moe_layer for layer in llama4.model.layers] == [False, True, False]
    assert [layer.self_attn.use_rope for layer in llama4.model.layers] == [1, 0, 1]  # layer 1: NoPE
    assert llama4.config.layer_types == ["chunked_attention", "full_attention", "chunked_attention"]
    gemma3 = _model("Gemma3ForCausalLM", tokenizer)
    assert [layer.self_attn.sliding_window for layer in gemma3.model.layers] == [24, None, 24]
    qwen2_moe = _model("Qwen2MoeForCausalLM", tokenizer)
    assert hasattr(qwen2_moe.model.layers[1].mlp, "shared_expert")


def test_one_token_recipients_with_mla(tokenizer):
    """An empty prefix in MLA's shapes (values of another head size than keys), alone and padded."""
    model = _model("DeepseekV3ForCausalLM", tokenizer)
    cells = parse_cells("full", LAYERS)
    recipients = ["", RECIPIENTS[1]]
    fast = hf.run_grid(model, tokenizer, DONORS, recipients, cells, "attn", 3, keep_logits=True)
    assert_same(fast, reference.run_grid(model, tokenizer, DONORS, recipients, cells, "attn", 3))
    fast = hf.run_grid(model, tokenizer, DONORS[:1], [""], cells, "ffn", 2, keep_logits=True)
    assert_same(fast, reference.run_grid(model, tokenizer, DONORS[:1], [""], cells, "ffn", 2))


def test_multimodal_gemma3_runs_on_its_language_model(tokenizer):
    """Gemma3ForConditionalGeneration (as AutoModelForCausalLM loads a Gemma 3 checkpoint) runs whole on text
    prompts; its decoder layers are its language model's."""
    model = _model("Gemma3ForConditionalGeneration", tokenizer)
    assert decoder_layers(model) is model.model.language_model.layers
    cells = parse_cells("0:0,2:1,1:2", LAYERS)
    for module in ("ffn", "attn"):
        fast = hf.run_grid(model, tokenizer, DONORS, RECIPIENTS, cells, module, 3, keep_logits=True,
                           option_token_ids=OPTIONS)
        assert_same(fast, reference.run_grid(model, tokenizer, DONORS, RECIPIENTS, cells, module, 3,
                                             option_token_ids=OPTIONS))


def test_multimodal_llama4_loads_as_its_language_model_or_is_refused(tokenizer, tmp_path):
    """A Llama 4 checkpoint loads (AutoModelForCausalLM) as Llama4ForCausalLM, which the engine runs; the
    multimodal model object itself is refused in one line saying what to pass instead."""
    from xtp_ray.engine.models import load_model

    model = _model("Llama4ForConditionalGeneration", tokenizer)
    with pytest.raises(UnknownArchitectureError) as refused:
        hf.HFEngine(model, tokenizer)
    assert "AutoModelForCausalLM" in str(refused.value) and "\n" not in str(refused.value)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert lookup(model.config).ffn == "feed_forward"  # the config (as planning reads it): the text model's roles
    loaded, loaded_tokenizer = load_model(str(tmp_path), device="cpu")
    assert type(loaded).__name__ == "Llama4ForCausalLM"
    text_layers = model.language_model.model.layers
    assert torch.equal(loaded.model.layers[1].feed_forward.router.weight, text_layers[1].feed_forward.router.weight)
    cells = parse_cells("0:0,2:1", LAYERS)
    fast = hf.run_grid(loaded, loaded_tokenizer, DONORS, RECIPIENTS, cells, "ffn", 3, keep_logits=True)
    assert_same(fast, reference.run_grid(loaded, loaded_tokenizer, DONORS, RECIPIENTS, cells, "ffn", 3))


def test_llama4_temperature_tuning_past_its_floor_scale_is_refused(tokenizer):
    """NoPE layers scale queries by position past `floor_scale`, counted from a cache the engine's rows do
    not hold in full: refused there, in one line; below it (every test above) the scale is 1 and exact."""
    model = _model("Llama4ForCausalLM", tokenizer, floor_scale=16)
    with pytest.raises(ValueError, match="floor_scale 16") as refused:
        hf.run_grid(model, tokenizer, DONORS, RECIPIENTS, parse_cells("0:0", LAYERS), "ffn", 2)
    assert "\n" not in str(refused.value)


def _spy_arguments(seen: dict):
    def spy(module, query, key, value, attention_mask, **kwargs):
        seen.setdefault(type(module).__name__, set()).update(kwargs)
        return cascade.cascade_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return spy


def test_accepted_attention_arguments_are_exactly_those_the_families_pass(tokenizer):
    """IRRELEVANT_ARGUMENTS is neither wider nor narrower than what the registered families' attention modules
    pass beyond the arguments the function implements (so nothing is accepted on speculation)."""
    seen: dict[str, set] = {}
    AttentionInterface.register(cascade.ATTENTION_NAME, _spy_arguments(seen))
    try:
        for architecture in sorted(TINY_CONFIGS):
            model = _model(architecture, tokenizer)
            hf.run_grid(model, tokenizer, DONORS[:1], RECIPIENTS[:1], parse_cells("0:0", LAYERS), "ffn", 1)
    finally:
        AttentionInterface.register(cascade.ATTENTION_NAME, cascade.cascade_attention_forward)
    implemented = {"scaling", "dropout", "softcap", "sliding_window", "s_aux", "xtp_prefix"}
    passed = set().union(*seen.values())
    assert len(seen) == len(TINY_CONFIGS)
    assert passed - implemented == set(IRRELEVANT_ARGUMENTS)
    assert "s_aux" in seen["GptOssAttention"]


def test_an_attention_argument_the_engine_does_not_implement_is_refused(tokenizer):
    """An attention module passing an argument the function does not implement stops the grid with one line
    naming the model and the argument; nothing is returned."""
    model = _model("Qwen3MoeForCausalLM", tokenizer)

    def add_argument(_module, args, kwargs):
        return args, {**kwargs, "window_size": (4, 0)}

    handle = model.model.layers[1].self_attn.register_forward_pre_hook(add_argument, with_kwargs=True)
    try:
        with pytest.raises(UnsupportedAttentionArgument) as refused:
            hf.run_grid(model, tokenizer, DONORS, RECIPIENTS, parse_cells("full", LAYERS), "ffn", 2)
    finally:
        handle.remove()
    message = str(refused.value)
    assert "Qwen3MoeForCausalLM" in message and "'window_size'" in message and "\n" not in message
    # attention dropout (a model left in training mode) is refused too
    with pytest.raises(UnsupportedAttentionArgument, match="dropout"):
        cascade.cascade_attention_forward(model.model.layers[0].self_attn, None, None, None, None, dropout=0.1)


@pytest.mark.parametrize("architecture", sorted(REFUSED))
def test_recurrent_and_linear_attention_models_are_refused_at_load(architecture):
    """Every refused name is a real transformers class, and `lookup` (which the loader and planning call
    before any weight is read) refuses it in one line saying why."""
    import transformers

    assert hasattr(transformers, architecture)
    config = transformers.LlamaConfig(architectures=[architecture])
    with pytest.raises(RefusedArchitectureError) as refused:
        lookup(config)
    assert architecture in str(refused.value) and "\n" not in str(refused.value)


def test_a_refused_checkpoint_fails_before_its_weights_are_read(tmp_path):
    import json

    from xtp_ray.engine.models import load_model

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Qwen3NextForCausalLM"],
                                                      "model_type": "qwen3_next"}))
    with pytest.raises(RefusedArchitectureError, match="Qwen3NextForCausalLM.*Gated DeltaNet"):
        load_model(str(tmp_path), device="cpu")


def test_llama4_rows_decoding_across_a_chunk_boundary(tokenizer, monkeypatch):
    """Chunks of 8: the long recipient's rows decode from position 68 across the chunk boundary at 72, so
    their earlier own keys (the patched token's among them) leave the query's chunk and are masked."""
    model = _model("Llama4ForCausalLM", tokenizer, attention_chunk_size=8)
    last = len(tokenizer(RECIPIENTS[0]).input_ids) - 1
    assert last // 8 != (last + 5) // 8  # the inputs of 6 new tokens sit at last ... last + 5
    masked = []
    own_masked = cascade.own_masked
    monkeypatch.setattr(cascade, "own_masked", lambda *args: masked.append(1) or own_masked(*args))
    cells = parse_cells("0:0,1:0,2:2,0:1", LAYERS)
    for module in ("ffn", "attn"):
        fast = hf.run_grid(model, tokenizer, DONORS, RECIPIENTS, cells, module, 6, keep_logits=True)
        assert_same(fast, reference.run_grid(model, tokenizer, DONORS, RECIPIENTS, cells, module, 6))
    assert masked  # own keys were masked by chunk


@pytest.mark.parametrize("architecture", FAMILIES)
def test_reference_compatible_attention_equals_reference(architecture, tokenizer):
    """`attn_ref` (the published code's post-attention residual) on a few cells of each family."""
    model = _model(architecture, tokenizer)
    cells = parse_cells("0:0,2:1,1:2", LAYERS)
    fast = hf.run_grid(model, tokenizer, DONORS, RECIPIENTS, cells, "attn_ref", 2, keep_logits=True)
    assert_same(fast, reference.run_grid(model, tokenizer, DONORS, RECIPIENTS, cells, "attn_ref", 2))

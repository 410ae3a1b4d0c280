"""Cascade attention against plain softmax attention over the concatenated keys, on random tensors.

Tolerance 1e-5 (fp32): the two differ only by where the softmax sum is split (prefix
part + own part merged by log-sum-exp), i.e. by float reassociation.
"""
from types import SimpleNamespace

import pytest
import torch

from xtp_ray.engine.cascade import (
    BIAS_ALIGNMENT,
    IRRELEVANT_ARGUMENTS,
    KERNELS,
    SharedPrefix,
    UnsupportedAttentionArgument,
    attend_fused,
    attend_matmul,
    attend_own_matmul,
    cascade_attention_forward,
    check_own_kernel,
    own_part,
    padding_bias,
)

TOL = 1e-5


def _plain(query, prefix_k, prefix_v, visible, own_k, own_v, scaling, softcap=None):
    """Row by row: softmax over [the visible prefix keys of its instance, its own keys]."""
    rows, heads = query.shape[:2]
    batch = prefix_k.shape[0]
    group = heads // prefix_k.shape[1]
    out = torch.empty_like(query)
    for r in range(rows):
        b = r % batch  # rows are cell-major: r = c * B + b
        keys = torch.cat([prefix_k[b][:, visible[b]], own_k[r]], dim=1).repeat_interleave(group, 0)  # [H, k, D]
        values = torch.cat([prefix_v[b][:, visible[b]], own_v[r]], dim=1).repeat_interleave(group, 0)
        scores = query[r] @ keys.transpose(-1, -2) * scaling  # [H, q, k]
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        out[r] = torch.softmax(scores, dim=-1) @ values
    return out


def _case(batch=3, n=5, heads=4, kv_heads=2, prefix=9, own=3, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = batch * n
    query = torch.randn(rows, heads, 1, dim, generator=g)
    prefix_k = torch.randn(batch, kv_heads, prefix, dim, generator=g)
    prefix_v = torch.randn(batch, kv_heads, prefix, dim, generator=g)
    own_k = torch.randn(rows, kv_heads, own, dim, generator=g)
    own_v = torch.randn(rows, kv_heads, own, dim, generator=g)
    mask = torch.ones(batch, prefix, dtype=torch.bool)
    for b in range(batch):  # left padding: instance b has b * 2 pad positions
        mask[b, :2 * b] = False
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return query, prefix_k, prefix_v, own_k, own_v, mask, positions


def _cascade(query, prefix_k, prefix_v, own_k, own_v, mask, positions=None, query_positions=None, fused=True,
             **kwargs):
    shared = SharedPrefix([prefix_k], [prefix_v], mask, positions, query_positions, fused=fused)
    out, weights = cascade_attention_forward(SimpleNamespace(layer_idx=0), query, own_k, own_v, None,
                                             xtp_prefix=shared, **kwargs)
    assert weights is None
    return out.transpose(1, 2)  # back to [R, H, q, D]


@pytest.mark.parametrize("kv_heads", [4, 2, 1])  # MHA, GQA, MQA
@pytest.mark.parametrize("fused", [True, False])
def test_equals_plain_attention_with_padding_and_gqa(kv_heads, fused):
    query, pk, pv, ok, ov, mask, _ = _case(kv_heads=kv_heads)
    got = _cascade(query, pk, pv, ok, ov, mask, fused=fused, scaling=0.25)
    want = _plain(query, pk, pv, mask, ok, ov, 0.25)
    assert torch.allclose(got, want, atol=TOL, rtol=0), (got - want).abs().max()


def test_softcap():
    query, pk, pv, ok, ov, mask, _ = _case()
    query = query * 8  # large scores, so the cap bites
    got = _cascade(query, pk, pv, ok, ov, mask, scaling=0.25, softcap=5.0)
    want = _plain(query, pk, pv, mask, ok, ov, 0.25, softcap=5.0)
    assert torch.allclose(got, want, atol=TOL, rtol=0)
    assert not torch.allclose(got, _cascade(query, pk, pv, ok, ov, mask, scaling=0.25), atol=1e-3)


def test_sliding_window_masks_prefix_keys_out_of_reach():
    query, pk, pv, ok, ov, mask, positions = _case(prefix=12)
    query_positions = positions[:, -1] + 3  # three steps into decoding
    window = 6
    visible = mask & (query_positions[:, None] - positions < window)
    assert (visible.sum(-1) < mask.sum(-1)).all()  # the window really hides keys
    got = _cascade(query, pk, pv, ok, ov, mask, positions, query_positions, scaling=0.25, sliding_window=window)
    assert torch.allclose(got, _plain(query, pk, pv, visible, ok, ov, 0.25), atol=TOL, rtol=0)


def test_an_all_padding_prefix_gives_own_attention_not_nan():
    query, pk, pv, ok, ov, mask, _ = _case()
    mask[1] = False  # instance 1's prefix is all padding: its log-sum-exp is -inf
    for fused in (True, False):
        got = _cascade(query, pk, pv, ok, ov, mask, fused=fused, scaling=0.25)
        assert torch.isfinite(got).all()
        assert torch.allclose(got, _plain(query, pk, pv, mask, ok, ov, 0.25), atol=TOL, rtol=0)
    empty = pk[:, :, :0]  # and a prefix of length 0 (a one-token prompt), fused or not: the fused CPU
    for fused in (True, False):  # kernel dies with SIGFPE on zero keys, so the prefix part must be skipped
        got = _cascade(query, empty, empty, ok, ov, mask[:, :0], fused=fused, scaling=0.25)
        assert torch.allclose(got, _plain(query, empty, empty, mask[:, :0], ok, ov, 0.25), atol=TOL, rtol=0)


@pytest.mark.parametrize("keys", [1, 13, 16, 130])
def test_padding_bias_strides_are_aligned_for_the_cuda_kernel(keys):
    """CUDA's fused kernel reads the bias in vectors: every stride but the last must be a multiple of
    8 elements (16-bit) or 4 (fp32), or it raises "attn_bias is not correctly aligned" and the engine
    would fall back to matmuls on every layer. The bias is the additive form of the mask, aligned."""
    mask = torch.rand(3, 1, 1, keys, generator=torch.Generator().manual_seed(keys)) > 0.3
    for dtype in (torch.bfloat16, torch.float32):
        bias = padding_bias(mask, dtype).expand(3, 4, 7, keys)  # as attend_fused hands it over
        assert bias.stride(-1) == 1
        assert all(stride % BIAS_ALIGNMENT == 0 for stride in bias.stride()[:-1])
        assert torch.equal(bias == float("-inf"), (~mask).expand(3, 4, 7, keys))
        assert (bias[mask.expand(3, 4, 7, keys)] == 0).all()


def test_fused_kernel_runs_here_and_equals_the_matmul_path():
    """The private fused op with log-sum-exp must exist on this torch (else the fallback hides it)."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 40, 16, generator=g) for _ in range(3))
    mask = torch.rand(2, 1, 1, 40, generator=g) > 0.3
    fused = attend_fused(q, k, v, 0.25, mask)
    assert fused is not None, "the fused CPU kernel is unavailable: the fallback would hide a regression"
    plain = attend_matmul(q, k, v, 0.25, mask)
    assert torch.allclose(fused[0], plain[0], atol=TOL, rtol=0)
    assert torch.allclose(fused[1], plain[1], atol=TOL, rtol=0)


@pytest.mark.parametrize("queries,softcap", [(1, None), (3, None), (3, 5.0)])
def test_own_keys_log_softmax_path_equals_logsumexp(queries, softcap):
    """The rows' own part takes lse as s_0 - log p_0 (key 0 is visible to every query): the same output
    and log-sum-exp as the plain logsumexp path, causal masks (several queries) and softcap included."""
    g = torch.Generator().manual_seed(2)
    q = torch.randn(12, queries, 16, generator=g) * 3  # [rows * KV heads, q, D], as `own_part` hands it over
    k, v = (torch.randn(12, 5, 16, generator=g) * 3 for _ in range(2))
    causal = torch.arange(5)[None, :] <= torch.arange(5 - queries, 5)[:, None] if queries > 1 else None
    out, lse = attend_own_matmul(q, k, v, 0.25, causal, softcap)
    want_out, want_lse = attend_matmul(q, k, v, 0.25, causal, softcap)
    assert torch.allclose(out, want_out, atol=TOL, rtol=0)
    assert torch.allclose(lse, want_lse, atol=TOL, rtol=0)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])  # MHA, GQA, MQA
def test_own_part_kernels_agree(kv_heads):
    """The rows' own part through the fused kernel (one problem of G queries per row and KV head) and
    through `bmm`s: the same output and log-sum-exp on the CPU, where "fused" runs torch's CPU kernel."""
    query, _, _, own_k, own_v, _, _ = _case(kv_heads=kv_heads, own=7)
    before = KERNELS.fused
    fused = own_part(query, own_k, own_v, 0.25, None, "fused")
    assert KERNELS.fused == before + 1, "the fused kernel did not run: the comparison would be matmul to matmul"
    matmul = own_part(query, own_k, own_v, 0.25, None, "matmul")
    assert KERNELS.fused == before + 1
    assert torch.allclose(fused[0], matmul[0], atol=TOL, rtol=0)
    assert torch.allclose(fused[1], matmul[1], atol=TOL, rtol=0)


def test_unknown_own_kernel_is_refused():
    assert check_own_kernel("fused") == "fused"
    with pytest.raises(ValueError, match="choose one of fused, matmul"):
        check_own_kernel("flash")


def _plain_general(query, prefix_k, prefix_v, visible, own_k, own_v, own_visible, scaling, sinks=None):
    """Row by row: softmax over [visible prefix keys, visible own keys(, one sink logit per head with no
    value)], as HF's eager attention (gpt-oss: the sink column is dropped after the softmax)."""
    rows, heads = query.shape[:2]
    batch = prefix_k.shape[0]
    group = heads // prefix_k.shape[1]
    out = query.new_empty(rows, heads, 1, prefix_v.shape[-1])
    for r in range(rows):
        b = r % batch
        keys = torch.cat([prefix_k[b][:, visible[b]], own_k[r][:, own_visible[b]]], 1).repeat_interleave(group, 0)
        values = torch.cat([prefix_v[b][:, visible[b]], own_v[r][:, own_visible[b]]], 1).repeat_interleave(group, 0)
        scores = query[r] @ keys.transpose(-1, -2) * scaling  # [H, 1, k]
        if sinks is not None:
            scores = torch.cat([scores, sinks.view(heads, 1, 1)], dim=-1)
        weights = torch.softmax(scores, dim=-1)[..., :keys.shape[1]]
        out[r] = weights @ values
    return out


@pytest.mark.parametrize("fused", [True, False])
def test_attention_sinks_are_a_third_part_of_the_softmax(fused):
    """gpt-oss's sinks (`s_aux`: a learned logit per head in the denominator, no value) merged exactly."""
    query, pk, pv, ok, ov, mask, _ = _case()
    sinks = torch.tensor([2.0, -1.0, 0.5, 4.0])  # [H]
    got = _cascade(query, pk, pv, ok, ov, mask, fused=fused, scaling=0.25, s_aux=sinks)
    everything = torch.ones(ok.shape[0], ok.shape[2], dtype=torch.bool)
    want = _plain_general(query, pk, pv, mask, ok, ov, everything, 0.25, sinks)
    assert torch.allclose(got, want, atol=TOL, rtol=0), (got - want).abs().max()
    assert not torch.allclose(got, _cascade(query, pk, pv, ok, ov, mask, scaling=0.25), atol=1e-3)


def test_chunked_attention_masks_prefix_and_own_keys_outside_the_query_chunk():
    """Llama 4's chunked layers: a query sees only keys in its own chunk of positions, prefix keys and the
    row's own (earlier generated) keys alike; each instance's rows sit at their own position."""
    query, pk, pv, ok, ov, mask, positions = _case(prefix=12, own=4)
    chunk = 7  # instance 0 is past its prefix's chunk; 1 and 2 see part of their prefix and all own keys
    query_positions = positions[:, -1] + 4  # the row's own keys sit at query_position - 3 ... query_position
    visible = mask & (positions // chunk == query_positions[:, None] // chunk)
    own_at = query_positions[:, None] - torch.arange(3, -1, -1)
    own_visible = own_at // chunk == query_positions[:, None] // chunk  # [B, s]
    assert not own_visible.all() and own_visible[:, -1].all()  # some own keys fell into an earlier chunk
    assert (visible.sum(-1) < mask.sum(-1)).all() and visible.any()
    module = SimpleNamespace(layer_idx=0, config=SimpleNamespace(layer_types=["chunked_attention"],
                                                                 attention_chunk_size=chunk))
    for fused in (True, False):
        shared = SharedPrefix([pk], [pv], mask, positions, query_positions, fused=fused)
        got = cascade_attention_forward(module, query, ok, ov, None, scaling=0.25, xtp_prefix=shared)[0]
        want = _plain_general(query, pk, pv, visible, ok, ov, own_visible, 0.25)
        assert torch.allclose(got.transpose(1, 2), want, atol=TOL, rtol=0)


@pytest.mark.parametrize("fused", [True, False])
def test_values_of_another_head_size_than_keys(fused):
    """MLA (DeepSeek-V3): keys and queries of one head size, values of another, GQA-free."""
    query, pk, _, ok, _, mask, _ = _case(kv_heads=4, dim=24)
    g = torch.Generator().manual_seed(5)
    pv = torch.randn(pk.shape[0], 4, pk.shape[2], 16, generator=g)
    ov = torch.randn(ok.shape[0], 4, ok.shape[2], 16, generator=g)
    got = _cascade(query, pk, pv, ok, ov, mask, fused=fused, scaling=0.25)
    everything = torch.ones(ok.shape[0], ok.shape[2], dtype=torch.bool)
    assert got.shape[-1] == 16
    assert torch.allclose(got, _plain_general(query, pk, pv, mask, ok, ov, everything, 0.25), atol=TOL, rtol=0)


def test_an_unknown_argument_is_refused_in_one_line():
    query, pk, pv, ok, ov, mask, _ = _case()
    with pytest.raises(UnsupportedAttentionArgument, match="'bogus'") as refused:
        _cascade(query, pk, pv, ok, ov, mask, scaling=0.25, bogus=True)
    assert "\n" not in str(refused.value)
    for name in IRRELEVANT_ARGUMENTS:  # accepted, and without effect
        got = _cascade(query, pk, pv, ok, ov, mask, scaling=0.25, **{name: True})
        assert torch.equal(got, _cascade(query, pk, pv, ok, ov, mask, scaling=0.25))

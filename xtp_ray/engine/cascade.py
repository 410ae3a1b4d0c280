"""Shared-prefix ("cascade") attention: many rows of one instance against one prefix KV.

The cells of an instance are batch rows (B instances x n cells = R rows, row
r = c * B + b: cell-major, so that the first m * B rows are m cells of every
instance). Every row shares its instance's prefix (the recipient prompt but its
last token), whose keys and values are stored once per layer and never copied or
expanded per row. A row's attention is computed in two parts, merged exactly by
log-sum-exp (as in Hydragen / FlashInfer's cascade attention):

- prefix part: for each instance and KV head, ONE matrix product of all its rows'
  queries (folded together, GQA groups included) against the prefix keys;
- own part: each row's queries against its own keys (its cell's last prompt token
  and the tokens it generated), which is all a row's cache holds (`own_cache`).

softmax([s_p, s_o]) @ [V_p; V_o] = (e^{lse_p} out_p + e^{lse_o} out_o) / (e^{lse_p} + e^{lse_o}).

It plugs into transformers as a registered attention function (`AttentionInterface`),
selected by `attn_implementation`; the prefix reaches it as a model kwarg
(`xtp_prefix`), since `past_key_values` is not forwarded to attention functions.
The HF modules do every projection, rotary embedding and norm. Shapes: B instances,
n rows per instance, R = B * n, H query heads, G = H / K_h query heads per KV head,
P prefix length, q query tokens per row, s own keys per row, D head dim.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import AttentionInterface

from ..names import DEFAULT_OWN_KERNEL, OWN_KERNELS

ATTENTION_NAME = "xtp_cascade"


@dataclass
class SharedPrefix:
    """Each instance's prefix K/V, once per layer, and which prefix positions are real."""
    keys: list[torch.Tensor]  # per layer [B, K_h, P, D] (after rotary, as the cache stores them)
    values: list[torch.Tensor]  # per layer [B, K_h, P, D]
    mask: torch.Tensor  # [B, P] bool: True for real tokens, False for left padding
    key_positions: torch.Tensor | None = None  # [B, P] position ids of the prefix tokens (sliding windows)
    query_positions: torch.Tensor | None = None  # [B] position id of this forward's rows (one per instance)
    fused: bool = True  # use torch's fused attention kernels (returning the log-sum-exp) where they apply
    own_kernel: str = DEFAULT_OWN_KERNEL  # the rows' own part: one of OWN_KERNELS (see `own_part`)
    dense: bool | None = None  # no padding anywhere (a non-sliding layer needs no mask); found once, kept by replace()

    def __post_init__(self):
        if self.dense is None:
            self.dense = bool(self.mask.all())

    def key_mask(self, layer: int, window: int | None, chunk: int | None = None) -> torch.Tensor | None:
        """[B, P_l] visible prefix keys of a layer (None: all); a sliding or chunked layer's cache may keep only
        its last P_l. window: keys less than `window` positions before the query (HF's sliding window);
        chunk: keys in the query's chunk of `chunk` positions (Llama 4's chunked attention)."""
        if window is None and chunk is None and self.dense:
            return None  # the fused kernels run faster without a mask
        kept = self.keys[layer].shape[2]
        visible = self.mask[:, self.mask.shape[1] - kept:]
        if window is not None or chunk is not None:
            if self.key_positions is None or self.query_positions is None:
                raise RuntimeError("a sliding-window or chunked layer needs the key and query positions")
            keys_at = self.key_positions[:, self.key_positions.shape[1] - kept:]  # [B, P_l]
            if window is not None:
                visible = visible & (self.query_positions[:, None] - keys_at < window)
            if chunk is not None:
                visible = visible & (keys_at // chunk == self.query_positions[:, None] // chunk)
        return visible

    def own_key_mask(self, own: int, chunk: int | None) -> torch.Tensor | None:
        """[B, s] which of a row's s own keys (its last prompt token, then one per generated token, the last
        at the query's position) lie in the query's chunk; None: all (no chunks, or every own key in it)."""
        if chunk is None:
            return None
        if self.query_positions is None:
            raise RuntimeError("a chunked layer needs the query positions")
        at = self.query_positions[:, None] - torch.arange(own - 1, -1, -1, device=self.query_positions.device)
        visible = at // chunk == self.query_positions[:, None] // chunk  # [B, s]
        return None if bool(visible.all()) else visible


def _fp32(tensor: torch.Tensor) -> torch.Tensor:
    """tensor in fp32; no call where it is already (at decode a no-op call costs as much as a small kernel)."""
    return tensor if tensor.dtype == torch.float32 else tensor.float()


def _masked(scores: torch.Tensor, key_mask: torch.Tensor | None, softcap: float | None) -> torch.Tensor:
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask, float("-inf"))
    return scores


def attend_matmul(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float,
                  key_mask: torch.Tensor | None = None, softcap: float | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain attention returning (out [..., m, D] in query's dtype, lse [..., m] fp32).

    query [..., m, D], key/value [..., k, D], key_mask broadcastable to [..., m, k].
    Scores and softmax in fp32 (as HF's eager attention). A row whose keys are all
    masked gets out 0 and lse -inf, so the merge gives it no weight.
    """
    scores = _masked(torch.matmul(query, key.transpose(-1, -2)).float() * scaling, key_mask, softcap)
    lse = torch.logsumexp(scores, dim=-1)  # [..., m]
    weights = torch.exp(scores - lse.clamp_min(torch.finfo(torch.float32).min)[..., None])  # all masked: 0
    return torch.matmul(weights.to(value.dtype), value), lse


@dataclass
class KernelCounts:
    """How often the fused kernels ran and fell back to matmuls (bench and GPU check read it)."""
    fused: int = 0
    fallbacks: int = 0
    last_error: str | None = None

    def reset(self) -> None:
        self.fused, self.fallbacks, self.last_error = 0, 0, None


KERNELS = KernelCounts()

# torch's fused CUDA kernel reads the bias in vectors: its batch/head/query strides must be multiples
# of 8 elements for 16-bit dtypes and 4 for fp32 ("attn_bias is not correctly aligned"). Like torch's
# public SDPA, allocate the key dimension rounded up to this and hand the kernel a view of the front.
BIAS_ALIGNMENT = 16


def padding_bias(key_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """key_mask [..., k] bool -> additive bias [..., k] (0 visible, -inf masked) whose every
    non-broadcast stride but the last is a multiple of BIAS_ALIGNMENT elements."""
    keys = key_mask.shape[-1]
    width = -(-keys // BIAS_ALIGNMENT) * BIAS_ALIGNMENT
    bias = torch.zeros(*key_mask.shape[:-1], width, dtype=dtype, device=key_mask.device)
    bias = bias[..., :keys]  # a view: strides keep the rounded-up width
    return bias.masked_fill_(~key_mask, float("-inf"))


def attend_fused(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float,
                 key_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The same through torch's fused kernels that also return the log-sum-exp, or None.

    4D inputs [N, h, m, D]. CPU: `_scaled_dot_product_flash_attention_for_cpu`; CUDA:
    `_scaled_dot_product_efficient_attention(compute_log_sumexp=True)`. Both are
    private ops: any failure falls back to `attend_matmul` (tests hold both equal) and
    is counted in KERNELS.
    """
    if query.is_cpu and value.shape[-1] != query.shape[-1]:
        return None  # the CPU kernel wants one head size for Q, K and V (MLA's values differ): not a failure
    bias = None
    if key_mask is not None:
        bias = padding_bias(key_mask, query.dtype).expand(*query.shape[:-1], key.shape[-2])
    try:
        if query.is_cpu:
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                query, key, value, 0.0, False, attn_mask=bias, scale=scaling)
        elif query.is_cuda:
            out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
                query, key, value, bias, True, 0.0, False, scale=scaling)[:2]
            lse = lse[..., :query.shape[-2]]  # padded to a multiple of 32 on some builds
        else:
            return None
    except (RuntimeError, TypeError, AttributeError, NotImplementedError) as exc:
        KERNELS.fallbacks += 1
        KERNELS.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        return None
    KERNELS.fused += 1
    lse = _fp32(lse)
    if key_mask is not None:  # the kernels' value for a row with every key masked is not -inf: make it so
        blind = ~key_mask.any(-1)  # broadcastable to [N, h, m]
        lse = lse.masked_fill(blind, float("-inf"))
        out = out.masked_fill(blind[..., None], 0.0)
    return out, lse


def merge(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor) -> torch.Tensor:
    """Exact softmax over the union of two key sets from each part's output and log-sum-exp.

    out [..., m, D], lse [..., m]. Part a's weight is e^lse_a / (e^lse_a + e^lse_b) =
    sigmoid(lse_a - lse_b): a part with lse -inf (all its keys masked, e.g. a prefix
    that is all padding) gets weight 0. Part b (the rows' own keys, which always
    include the current token) is never all masked.
    """
    weight = torch.sigmoid(lse_a - lse_b).unsqueeze(-1)  # [..., m, 1]
    if out_a.dtype == torch.float32:
        return torch.lerp(out_b, out_a, weight)
    return torch.lerp(out_b.float(), out_a.float(), weight).to(out_a.dtype)


def prefix_part(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None,
                scaling: float, softcap: float | None, fused: bool, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """query [R, H, q, D] (row r = c * B + b) against each instance's prefix:
    (out [n, B, K_h, G, q, D], lse [n, B, K_h, G, q]), views of one attention call's result.

    keys/values [B, K_h, P, D], mask [B, P] or None (the keys every row of instance b may
    see: all rows of an instance sit at the same position, so one mask serves them all).
    The result stays in the kernel's layout: `merge` reads it through these views, and no
    reshape back to [R, H, q, D] copies it (a copy wherever G > 1 or B > 1).
    """
    rows, heads, q_len, dim = query.shape
    kv_heads, prefix_len = keys.shape[1], keys.shape[2]
    n, group = rows // batch, heads // kv_heads
    if prefix_len == 0:  # a one-token prompt: no prefix keys; lse -inf gives this part no weight in `merge`
        return (query.new_zeros(n, batch, kv_heads, group, q_len, values.shape[-1]),
                query.new_full((n, batch, kv_heads, group, q_len), float("-inf"), dtype=torch.float32))
    # fold: [n, B, K_h, G, q, D] -> [B, K_h, n, G, q, D] -> [B, K_h, n * G * q, D] (a view where G * q == 1)
    folded = query.view(n, batch, kv_heads, group, q_len, dim).permute(1, 2, 0, 3, 4, 5)
    folded = folded.reshape(batch, kv_heads, n * group * q_len, dim)
    key_mask = mask[:, None, None, :].to(query.device) if mask is not None else None  # [B, 1, 1, P]
    result = attend_fused(folded, keys, values, scaling, key_mask) if fused and softcap is None else None
    if result is None:
        result = attend_matmul(folded, keys, values, scaling, key_mask, softcap)
    out, lse = result  # [B, K_h, n*G*q, D], [B, K_h, n*G*q]
    return (out.view(batch, kv_heads, n, group, q_len, -1).permute(2, 0, 1, 3, 4, 5),
            lse.view(batch, kv_heads, n, group, q_len).permute(2, 0, 1, 3, 4))


def check_own_kernel(kernel: str) -> str:
    if kernel not in OWN_KERNELS:
        raise ValueError(f"own-token attention kernel {kernel!r} unknown; choose one of {', '.join(OWN_KERNELS)}")
    return kernel


def own_part(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float,
             softcap: float | None, kernel: str = DEFAULT_OWN_KERNEL, key_mask: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """query [R, H, q, D] against each row's own keys [R, K_h, s, D] (causal over the last q):
    (out [R, K_h, G, q, D], lse [R, K_h, G, q]).

    key_mask [R, s] (one query per row): the own keys each row may see (a chunked layer's, where a row's
    earlier tokens fell into an earlier chunk), through `attend_matmul`, which allows any key masked.

    kernel "fused": torch's fused kernel where it applies (one query per row, no softcap), else `bmm`s;
    "matmul": `bmm`s always. On the CPU the two are level on the bench grid and at 1,024 rows, and the
    fused kernel is ~0.4-0.5 ms per decode step cheaper at 2 rows, where dispatch is all
    (`bench/cpu-2026-11-30-own-kernel-ab.txt`). On a GPU the fused kernel runs one block per (row, KV
    head) for G queries; whether it or `bmm`s win at 2,050 rows is what the GPU check's `own_attention`
    phase measures.
    """
    if key_mask is not None:
        return own_masked(query, key, value, scaling, softcap, key_mask)
    if kernel == "fused" and query.shape[2] == 1 and softcap is None:
        result = own_fused(query, key, value, scaling)
        if result is not None:
            return result
    return own_matmul(query, key, value, scaling, softcap)


def own_masked(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float, softcap: float | None,
               key_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`own_part` for one query per row where some own keys are masked (key_mask [R, s])."""
    rows, heads, q_len, dim = query.shape
    if q_len != 1:
        raise RuntimeError("masked own keys take one query per row")
    kv_heads = key.shape[1]
    out, lse = attend_matmul(query.view(rows, kv_heads, heads // kv_heads, dim), key, value, scaling,
                             key_mask[:, None, None, :], softcap)  # [R, K_h, G, D], [R, K_h, G]
    return out.unsqueeze(3), lse.unsqueeze(3)


def own_fused(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float
              ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`own_part` for one query per row through the fused kernel (or None where it fails): the G queries of
    a KV head need no mask, so they are one problem of G queries against the row's s keys."""
    rows, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    result = attend_fused(query.view(rows, kv_heads, group, dim), key, value, scaling)  # [R, K_h, G, D]
    if result is None:
        return None
    out, lse = result  # [R, K_h, G, D] (views, no copy, where the kernels lay it out as [R, G, K_h, D]), [R, K_h, G]
    return out.unsqueeze(3), lse.unsqueeze(3)


def own_matmul(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float,
               softcap: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`own_part` as `bmm`s over (row, KV head), any number of queries per row."""
    rows, heads, q_len, dim = query.shape
    kv_heads, own = key.shape[1], key.shape[2]
    group = heads // kv_heads
    causal = None
    if q_len > 1:  # query t sits at own position s - q + t and sees keys up to it
        at = torch.arange(own - q_len, own, device=query.device)
        causal = (torch.arange(own, device=query.device)[None, :] <= at[:, None]).repeat(group, 1)
    # 3-D, (row, KV head) as the batch: GQA without repeating keys, and batched products without the
    # 4-D matmul's folding; the own-token cache's views merge these dims without a copy.
    out, lse = attend_own_matmul(query.reshape(rows * kv_heads, group * q_len, dim),  # [R*K_h, G*q, D]
                                 key.reshape(rows * kv_heads, own, dim),  # [R*K_h, s, D]
                                 value.reshape(rows * kv_heads, own, value.shape[-1]), scaling, causal, softcap)
    return out.view(rows, kv_heads, group, q_len, -1), lse.view(rows, kv_heads, group, q_len)


def attend_own_matmul(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float,
                      causal: torch.Tensor | None, softcap: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`attend_matmul` for the rows' own keys, where key 0 (the row's last prompt token) is visible to
    every query: one `log_softmax` gives the weights (its exp) and the log-sum-exp (s_0 - log p_0), in
    3 ops where logsumexp + exp(scores - lse) take ~12 and compute the exponentials twice.
    query [N, m, D], key/value [N, s, D] -> (out [N, m, D], lse [N, m] fp32). Three dimensions, so
    that the products are plain `bmm`s (4-D `matmul` folds and unfolds the batch dims around one), and
    no call where a conversion has nothing to do: at decode each costs as much as a small kernel."""
    scores = torch.bmm(query, key.transpose(1, 2))  # [N, m, s]
    scores = scores.mul_(scaling) if scores.dtype == torch.float32 else scores.float() * scaling
    scores = _masked(scores, causal, softcap)
    logp = torch.log_softmax(scores, dim=-1)  # [N, m, s]
    lse = scores[..., 0] - logp[..., 0]  # [N, m]: lse = s_k - log p_k for any visible k
    weights = logp.exp_()
    return torch.bmm(weights if weights.dtype == value.dtype else weights.to(value.dtype), value), lse


# Keyword arguments HF's attention modules pass to an attention function, beyond the named ones that
# `cascade_attention_forward` implements (scaling, dropout 0, softcap, sliding_window, s_aux) and the engine's
# own xtp_prefix. Seen from every registered family's modules (transformers 5.19); each cannot change the result:
IRRELEVANT_ARGUMENTS = {
    # rotary embeddings are applied by the module before the call; masks come from xtp_prefix's positions
    "position_ids": "applied by the module (rotary) before the call",
    # the module has written this step's keys/values to the cache before the call
    "use_cache": "the cache is written before the call",
    # a mixture-of-experts router's flag, passed down with every model kwarg; attention never reads it
    "output_router_logits": "read by MoE routers only",
}


class UnsupportedAttentionArgument(ValueError):
    """An attention module passed an argument the cascade function does not implement: refused, never run."""


def _model_name(module) -> str:
    config = getattr(module, "config", None)
    names = getattr(config, "architectures", None) or []
    return f"{names[0]} ({type(module).__name__})" if names else type(module).__name__


def refuse_unknown_arguments(module, dropout: float, kwargs: dict) -> None:
    """One line naming the model and the argument for anything the cascade function would otherwise ignore."""
    unknown = sorted(set(kwargs) - set(IRRELEVANT_ARGUMENTS))
    if unknown:
        raise UnsupportedAttentionArgument(
            f"{_model_name(module)}: the hf engine's attention does not implement the argument "
            f"{', '.join(map(repr, unknown))}; refusing rather than ignoring it (use the reference engine)")
    if dropout:
        raise UnsupportedAttentionArgument(f"{_model_name(module)}: attention dropout {dropout} (training mode) "
                                           "is not implemented; put the model in eval mode")


def attention_chunk(module) -> int | None:
    """The chunk size of a chunked-attention layer (Llama 4: `layer_types` "chunked_attention"), else None.
    HF's modules do not pass it to the attention function; the mask builder reads it from the config."""
    config = getattr(module, "config", None)
    types = getattr(config, "layer_types", None)
    if not types or types[module.layer_idx] != "chunked_attention":
        return None
    return config.attention_chunk_size


def with_sinks(out: torch.Tensor, lse: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """Attention sinks (gpt-oss `s_aux`): one learned logit per head in the softmax denominator, with no
    value, as a third part of the merge: out * e^lse / (e^lse + e^sink) = out * sigmoid(lse - sink).

    out [n, B, K_h, G, q, D] over the keys, lse [n, B, K_h, G, q] their log-sum-exp, sinks [H] (H = K_h * G).
    """
    kv_heads, group = out.shape[2], out.shape[3]
    sink = sinks.float().view(kv_heads, group, 1)  # [K_h, G, 1], broadcast over n, B and q
    weight = torch.sigmoid(lse - sink).unsqueeze(-1)  # [n, B, K_h, G, q, 1]
    return (out.float() * weight).to(out.dtype)


def cascade_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None,
                              sliding_window=None, s_aux=None, xtp_prefix: SharedPrefix | None = None, **kwargs):
    """The registered attention function: HF passes query [R, H, q, D] and the rows' own
    key/value [R, K_h, s, D] (their cache holds nothing else); returns ([R, q, H, D_v], None).

    A sliding-window layer (Gemma 2/3, gpt-oss) masks the prefix keys that fell out of the window; the rows'
    own keys all lie inside it (the engine refuses more new tokens than that). A chunked layer (Llama 4)
    masks the prefix and own keys outside the query's chunk. Attention sinks (s_aux) are a third part of the
    softmax. Values may have another head size than queries and keys (MLA). Any other argument is refused.
    attention_mask is HF's mask over the keys it passed, the rows' own only (the engine's forwards pass no
    padding: each row's own keys are all real); every mask here comes from xtp_prefix's positions instead.
    """
    refuse_unknown_arguments(module, dropout, kwargs)
    if xtp_prefix is None:
        raise RuntimeError(f"{ATTENTION_NAME} attention needs the shared prefix (model kwarg xtp_prefix)")
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    layer, (rows, heads, q_len, _) = module.layer_idx, query.shape
    chunk = attention_chunk(module)
    keys = xtp_prefix.keys[layer]
    batch, kv_heads = keys.shape[0], keys.shape[1]
    out_p, lse_p = prefix_part(query, keys, xtp_prefix.values[layer],
                               xtp_prefix.key_mask(layer, sliding_window, chunk),
                               scaling, softcap, xtp_prefix.fused, batch)  # [n, B, K_h, G, q, D], [n, B, K_h, G, q]
    kernel = xtp_prefix.own_kernel if xtp_prefix.fused else "matmul"
    own_mask = xtp_prefix.own_key_mask(key.shape[2], chunk)  # [B, s] or None
    if own_mask is not None:
        own_mask = own_mask.repeat(rows // batch, 1)  # [R, s]: row r = c * B + b is instance b's
    out_o, lse_o = own_part(query, key, value, scaling, softcap, kernel, own_mask)  # [R, K_h, G, q, D], [R, K_h, G, q]
    grouped = (rows // batch, batch, kv_heads, heads // kv_heads, q_len)
    # `merge` lerps from the own part, so the output takes its layout: [R, H, q, D], HF's [R, q, H, D] where q == 1
    out = merge(out_p, lse_p, out_o.view(*grouped, -1), lse_o.view(grouped))  # [n, B, K_h, G, q, D]
    if s_aux is not None:
        out = with_sinks(out, torch.logaddexp(lse_p, lse_o.view(grouped)), s_aux)
    return out.permute(0, 1, 4, 2, 3, 5).reshape(rows, q_len, heads, -1), None  # a view where q == 1


AttentionInterface.register(ATTENTION_NAME, cascade_attention_forward)


@contextmanager
def cascade_attention(model) -> Iterator[None]:
    """Run the model's attention modules through the cascade function inside the block."""
    config = model.config
    previous = config._attn_implementation
    config._attn_implementation = ATTENTION_NAME
    try:
        yield
    finally:
        config._attn_implementation = previous

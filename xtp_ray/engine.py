"""The fast grid engine (SPEC 6): no L^2 full passes.

Per batch of instances (B of them, left padded, recipient length T):
1. one donor forward captures the donor value of every layer at the last token;
2. one recipient prefill over the P = T - 1 prefix tokens builds the prefix KV
   cache, shared by every cell (patching the last position leaves every earlier
   position untouched under causal attention);
3. the cells of a chunk (n of them, vanilla included) become n copies of the last
   prompt token laid side by side after the prefix, all at the same position id.
   A 4D mask lets each copy see the prefix and itself only, so each copy is exactly
   the recipient's last token of its own cell; the target layer's module output of
   each copy is replaced by its source layer's donor value. The prefix KV is read,
   never copied, and one forward scores n cells;
4. greedy decoding continues every cell in the same layout: at step s each cell
   adds one token that sees the prefix and its own tokens only.

The model's own HF modules do all the computing; the engine only lays out tokens,
masks and position ids. Results equal `reference.py` (one donor forward + one
patched `generate` per cell). Peak memory grows with cells_per_chunk: the chunk's
attention scores are [B, heads, n, P + n * (steps + 1)].
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from .architectures import num_layers
from .capture import capture_last_token, replace_positions
from .cells import VANILLA, Cell

# Rows (instances x cells) per forward when decoding: attention over the cells' own
# tokens grows as n^2 * steps, so generation uses smaller chunks than scoring. 192 rows
# measured best on the bench model (16 layers, hidden 256) with 1 and 2 instances.
DEFAULT_ROWS_GENERATE = 192
DEFAULT_CHUNK_SCORE = 1024


@dataclass
class CellResult:
    cell: Cell
    token_ids: list[int] = field(default_factory=list)  # greedy continuation, eos included
    logits: torch.Tensor | None = None  # [V] next-token logits at the patched position
    option_logprobs: list[float] | None = None  # per option, from next-token log-probs


def eos_ids(model, tokenizer) -> set[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, (list, tuple)) else {eos}


def encode_left_padded(tokenizer, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [B, T], mask [B, T], left padded so position -1 is each prompt's last token."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    if enc["input_ids"].shape[1] == 0 or (enc["attention_mask"].sum(-1) == 0).any():
        raise ValueError("empty prompt: it has no tokens")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids [B, T] that skip left padding (the same as an unpadded run)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def option_logprobs(logits: torch.Tensor, option_token_ids: list[list[int]]) -> list[float]:
    """log P(option) at one position: logsumexp of the log-probs of the option's tokens."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # [V]
    return [torch.logsumexp(logp[ids], dim=0).item() for ids in option_token_ids]


def _share(cache: DynamicCache) -> DynamicCache:
    """A cache that starts from the same prefix tensors (updates concatenate, so the
    prefix itself is never modified and every chunk starts from it again)."""
    shared = copy.copy(cache)
    shared.layers = [copy.copy(layer) for layer in cache.layers]
    return shared


def _cells_mask(prefix_mask: torch.Tensor, n: int, segments: int, dtype) -> torch.Tensor:
    """Additive mask [B, 1, n, P + n * segments] for the newest segment of n cell tokens.

    Key layout: the P prefix tokens, then `segments` blocks of n cell tokens (block s
    holds every cell's token of step s). Cell c sees the unpadded prefix and column c
    of every block: its own tokens.
    """
    batch = prefix_mask.shape[0]
    own = torch.eye(n, dtype=torch.bool, device=prefix_mask.device).repeat(1, segments)  # [n, n*segments]
    allowed = torch.cat([prefix_mask.bool()[:, None, :].expand(batch, n, -1),
                         own[None].expand(batch, -1, -1)], dim=-1)  # [B, n, P + n*segments]
    blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=prefix_mask.device)
    zero = torch.zeros((), dtype=dtype, device=prefix_mask.device)
    return torch.where(allowed, zero, blocked)[:, None]


def _sliding_window(cache: DynamicCache) -> int | None:
    windows = [layer.sliding_window for layer in cache.layers if getattr(layer, "is_sliding", False)]
    return min(windows) if windows else None


def chunk_bytes(model, batch: int, prefix_len: int, n: int, max_new_tokens: int) -> int:
    """An upper estimate of the transient memory of one chunk of n cells for B instances.

    The terms, at the last decoding step (the largest), K = P + n * (steps + 1) keys:
    eager attention's scores [B, heads, n, K] in fp32, six live copies at the peak
    (matmul, scale, mask add, softmax, and their allocator reuse) plus the additive
    mask; the cells' own KV in every layer; one layer's concatenated and head-repeated
    copy of the whole cache; activations of n rows through the widest module; logits.
    The sum is doubled: growing caches fragment the CPU allocator; 1.5 was measured
    to be just enough on this machine (tests/test_memory.py), 2 leaves a margin.
    """
    config = model.config
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    inter = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    element = torch.finfo(model.dtype).bits // 8
    steps = max_new_tokens + 1
    keys = prefix_len + n * steps
    rows = batch * n
    scores = 6 * batch * heads * n * keys * 4 + batch * n * keys * (element + 1)
    own_kv = num_layers(model) * 2 * batch * kv_heads * n * steps * head_dim * element
    cache_copy = 2 * batch * (kv_heads + heads) * keys * head_dim * element
    activations = 4 * rows * (hidden + 2 * inter) * element
    logits = 2 * rows * config.vocab_size * 4
    return int(2 * (scores + own_kv + cache_copy + activations + logits))


def cells_for_budget(model, batch: int, prefix_len: int, max_new_tokens: int, budget_bytes: int,
                     most: int) -> int:
    """The largest chunk (at most `most` cells) whose estimate fits the budget."""
    fits = 0
    low, high = 1, most
    while low <= high:
        mid = (low + high) // 2
        if chunk_bytes(model, batch, prefix_len, mid, max_new_tokens) <= budget_bytes:
            fits, low = mid, mid + 1
        else:
            high = mid - 1
    if fits < 1:
        need = chunk_bytes(model, batch, prefix_len, 1, max_new_tokens)
        raise ValueError(f"a memory budget of {budget_bytes / 2**20:.0f} MiB is below one cell's "
                         f"{need / 2**20:.0f} MiB for {batch} instance(s) of {prefix_len + 1} tokens; "
                         "raise it or lower the batch size")
    return fits


@torch.no_grad()
def capture_donors(model, tokenizer, donors: list[str], module: str) -> torch.Tensor:
    """Donor values of every layer at the last donor token: [B, L, d]."""
    layers = list(range(num_layers(model)))
    ids, mask = encode_left_padded(tokenizer, donors, model.device)
    with capture_last_token(model, module, layers) as store:
        model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=False)
    return torch.stack([store[layer] for layer in layers], dim=1)


@torch.no_grad()
def run_grid(model, tokenizer, donors: list[str], recipients: list[str], cells: list[Cell],
             module: str, max_new_tokens: int = 20, cells_per_chunk: int | None = None,
             option_token_ids: list[list[list[int]]] | None = None,
             keep_logits: bool = False, memory_budget_mb: float | None = None) -> list[list[CellResult]]:
    """Vanilla + every cell for each (donor, recipient) pair.

    Returns, per instance, [vanilla, *cells] results. max_new_tokens=0 scores only
    (no decoding). option_token_ids[b][k] lists the token ids of option k of
    instance b. cells_per_chunk: cells of each instance per forward (default: all
    when scoring, DEFAULT_ROWS_GENERATE rows per forward when decoding).
    memory_budget_mb: shrink chunks until `chunk_bytes` fits it.
    """
    if len(donors) != len(recipients):
        raise ValueError("donors and recipients differ in length")
    if cells_per_chunk is None:
        cells_per_chunk = (max(16, DEFAULT_ROWS_GENERATE // len(recipients)) if max_new_tokens > 0
                           else DEFAULT_CHUNK_SCORE)
    if cells_per_chunk < 1:
        raise ValueError("cells_per_chunk must be positive")
    device = model.device
    donor_values = capture_donors(model, tokenizer, donors, module)  # [B, L, d]

    ids, mask = encode_left_padded(tokenizer, recipients, device)  # [B, T]
    pos = positions(mask)  # [B, T]
    prefix = DynamicCache(config=model.config)
    if ids.shape[1] > 1:
        model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1],
              past_key_values=prefix, use_cache=True)
    prefix_len = ids.shape[1] - 1
    window = _sliding_window(prefix)
    if window is not None:  # keep every key inside the window, as the reference sees them
        fits = (window - 1 - prefix_len) // (max_new_tokens + 1)
        if fits < 1:
            raise ValueError(f"prompt of {prefix_len + 1} tokens plus {max_new_tokens} new tokens does not fit "
                             f"the model's sliding window of {window}; use the reference engine")
        cells_per_chunk = min(cells_per_chunk, fits)

    all_cells = [VANILLA, *cells]
    if memory_budget_mb is not None:
        cells_per_chunk = cells_for_budget(model, len(recipients), prefix_len, max_new_tokens,
                                           int(memory_budget_mb * 2**20), min(cells_per_chunk, len(all_cells)))
    results = [[CellResult(cell) for cell in all_cells] for _ in recipients]
    stop = eos_ids(model, tokenizer)
    for start in range(0, len(all_cells), cells_per_chunk):
        chunk = all_cells[start:start + cells_per_chunk]
        logits, tokens = _run_chunk(model, module, chunk, donor_values, ids[:, -1], mask[:, :-1],
                                    pos[:, -1], prefix, max_new_tokens, stop)
        for b, row in enumerate(results):
            for c in range(len(chunk)):
                result = row[start + c]
                if keep_logits:
                    result.logits = logits[b, c].float().cpu()
                if option_token_ids is not None:
                    result.option_logprobs = option_logprobs(logits[b, c], option_token_ids[b])
                if tokens is not None:
                    result.token_ids = tokens[b][c]
    return results


def _run_chunk(model, module, chunk, donor_values, last_token, prefix_mask, last_pos, prefix,
               max_new_tokens, stop):
    """One chunk of n cells for all B instances: logits [B, n, V], tokens [B][n] or None."""
    batch, n = last_token.shape[0], len(chunk)
    by_target: dict[int, list[int]] = {}
    for c, cell in enumerate(chunk):
        if cell != VANILLA:
            by_target.setdefault(cell.target_layer, []).append(c)
    patches = {
        j: (torch.tensor(cs, device=last_token.device),
            donor_values[:, [chunk[c].source_layer for c in cs]])  # [B, k, d]
        for j, cs in by_target.items()
    }
    cache = _share(prefix)
    dtype = model.dtype
    with replace_positions(model, module, patches):
        out = model(input_ids=last_token[:, None].expand(batch, n),
                    attention_mask=_cells_mask(prefix_mask, n, 1, dtype),
                    position_ids=last_pos[:, None].expand(batch, n),
                    past_key_values=cache, use_cache=True)
    logits = out.logits  # [B, n, V]
    if max_new_tokens == 0:
        return logits, None

    generated = [[[] for _ in range(n)] for _ in range(batch)]
    finished = torch.zeros(batch, n, dtype=torch.bool, device=logits.device)
    stop_ids = torch.tensor(sorted(stop), dtype=torch.long, device=logits.device)
    next_token = logits.argmax(-1)  # [B, n]
    for step in range(max_new_tokens):
        for b, c in (~finished).nonzero().tolist():
            generated[b][c].append(int(next_token[b, c]))
        finished |= torch.isin(next_token, stop_ids)
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        out = model(input_ids=next_token,
                    attention_mask=_cells_mask(prefix_mask, n, step + 2, dtype),
                    position_ids=(last_pos + step + 1)[:, None].expand(batch, n),
                    past_key_values=cache, use_cache=True)
        next_token = out.logits.argmax(-1)
    return logits, generated

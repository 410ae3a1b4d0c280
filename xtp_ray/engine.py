"""The fast grid engine (SPEC 6): no L^2 full passes.

Per batch of instances:
1. one donor forward captures the donor value of every layer at the last token;
2. one recipient prefill over all but the last prompt token builds the prefix KV
   cache, shared by every cell of the instance (patching the last position leaves
   every earlier position untouched under causal attention);
3. every cell (and vanilla) becomes one row: the last prompt token, run against a
   copy of its instance's prefix KV, with the target layer's module output replaced
   by the source layer's donor value. Rows are batched across cells and instances,
   cells_per_chunk at a time (this bounds peak memory: each row carries its own KV);
4. greedy decoding continues every row in the same batch from its own cache.

Results equal `reference.py` (one donor forward + one patched `generate` per cell).
Left padding + explicit position ids make a batch of instances equal one at a time.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from .architectures import num_layers
from .capture import capture_last_token, replace_last_token
from .cells import VANILLA, Cell


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
    if (enc["attention_mask"].sum(-1) == 0).any():
        raise ValueError("empty prompt: it has no tokens")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids [B, T] that skip left padding (the same as an unpadded run)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def option_logprobs(logits: torch.Tensor, option_token_ids: list[list[int]]) -> list[float]:
    """log P(option) at one position: logsumexp of the log-probs of the option's tokens."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # [V]
    return [torch.logsumexp(logp[ids], dim=0).item() for ids in option_token_ids]


def _select_rows(cache: DynamicCache, rows: torch.Tensor) -> DynamicCache:
    """A new cache holding the given batch rows of every layer (prefix KV per cell)."""
    selected = copy.copy(cache)
    selected.layers = []
    for layer in cache.layers:
        new = copy.copy(layer)
        if getattr(layer, "keys", None) is not None:
            new.keys = layer.keys.index_select(0, rows)  # [R, heads, T-1, head_dim]
            new.values = layer.values.index_select(0, rows)
        selected.layers.append(new)
    return selected


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
             module: str, max_new_tokens: int = 20, cells_per_chunk: int = 256,
             option_token_ids: list[list[list[int]]] | None = None,
             keep_logits: bool = False) -> list[list[CellResult]]:
    """Vanilla + every cell for each (donor, recipient) pair.

    Returns, per instance, [vanilla, *cells] results. max_new_tokens=0 scores only
    (no decoding). option_token_ids[b][k] lists the token ids of option k of instance b.
    """
    if len(donors) != len(recipients):
        raise ValueError("donors and recipients differ in length")
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

    all_cells = [VANILLA, *cells]
    results = [[CellResult(cell) for cell in all_cells] for _ in recipients]
    rows = [(b, c) for b in range(len(recipients)) for c in range(len(all_cells))]
    stop = eos_ids(model, tokenizer)
    for start in range(0, len(rows), cells_per_chunk):
        chunk = rows[start:start + cells_per_chunk]
        instance = torch.tensor([b for b, _ in chunk], device=device)  # [R]
        patches: dict[int, tuple[list[int], list[torch.Tensor]]] = {}
        for r, (b, c) in enumerate(chunk):
            cell = all_cells[c]
            if cell != VANILLA:
                row_ids, values = patches.setdefault(cell.target_layer, ([], []))
                row_ids.append(r)
                values.append(donor_values[b, cell.source_layer])
        patches_t = {j: (torch.tensor(r, device=device), torch.stack(v)) for j, (r, v) in patches.items()}

        cache = _select_rows(prefix, instance)
        row_mask = mask[instance]  # [R, T]
        with replace_last_token(model, module, patches_t):
            out = model(input_ids=ids[instance, -1:], attention_mask=row_mask,
                        position_ids=pos[instance, -1:], past_key_values=cache, use_cache=True)
        logits = out.logits[:, -1]  # [R, V]
        for r, (b, c) in enumerate(chunk):
            result = results[b][c]
            if keep_logits:
                result.logits = logits[r].float().cpu()
            if option_token_ids is not None:
                result.option_logprobs = option_logprobs(logits[r], option_token_ids[b])
        if max_new_tokens > 0:
            tokens = _greedy_decode(model, logits, cache, row_mask, pos[instance, -1], max_new_tokens, stop)
            for r, (b, c) in enumerate(chunk):
                results[b][c].token_ids = tokens[r]
    return results


def _greedy_decode(model, logits, cache, mask, last_pos, max_new_tokens, stop) -> list[list[int]]:
    """Greedy continuation of every row from its own cache; a row ends at eos (kept)."""
    rows = logits.shape[0]
    next_token = logits.argmax(-1)  # [R]
    generated = [[] for _ in range(rows)]
    finished = torch.zeros(rows, dtype=torch.bool, device=logits.device)
    position = last_pos  # [R]
    for step in range(max_new_tokens):
        for r in (~finished).nonzero().flatten().tolist():
            generated[r].append(int(next_token[r]))
        finished |= torch.tensor([int(t) in stop for t in next_token.tolist()], device=logits.device)
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)  # [R, T + step + 1]
        position = position + 1
        out = model(input_ids=next_token[:, None], attention_mask=mask, position_ids=position[:, None],
                    past_key_values=cache, use_cache=True)
        next_token = out.logits[:, -1].argmax(-1)
    return generated

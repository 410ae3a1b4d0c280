"""The slow reference: the plain hook-based definition of a transplant (SPEC 1).

For each cell: one donor forward (capture the module output of source layer i at
the last donor token), then one recipient `generate` whose prefill has the module
output of target layer j at the last prompt token replaced by that value. Decoded
tokens are not patched (the hook fires on the first forward only). One instance at
a time, no padding. This is what the fast engine is tested against.
"""
from __future__ import annotations

import torch

from ..cells import VANILLA, Cell
from .capture import capture_last_token, replace_rows
from .contract import CellResult, eos_ids, option_logprobs, trim_at_stop


def _encode(tokenizer, prompt: str, device) -> torch.Tensor:
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)  # [1, T]
    if ids.shape[1] == 0:
        raise ValueError("empty prompt: it has no tokens")
    return ids


@torch.no_grad()
def run_cell(model, tokenizer, donor: str, recipient: str, cell: Cell, module: str,
             max_new_tokens: int = 20, option_token_ids: list[list[int]] | None = None) -> CellResult:
    device = model.device
    patches = {}
    if cell != VANILLA:
        with capture_last_token(model, module, [cell.source_layer]) as store:
            model(input_ids=_encode(tokenizer, donor, device), use_cache=False)
        value = store[cell.source_layer]  # [1, d]
        patches = {cell.target_layer: (torch.tensor([0], device=device), value)}  # row 0, last position
    recipient_ids = _encode(tokenizer, recipient, device)
    result = CellResult(cell)
    with replace_rows(model, module, patches, first_call_only=True):
        if max_new_tokens > 0:
            stop = sorted(eos_ids(model, tokenizer))
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop or [0])[0]
            out = model.generate(
                recipient_ids, attention_mask=torch.ones_like(recipient_ids), do_sample=False,
                max_new_tokens=max_new_tokens, min_new_tokens=0, eos_token_id=stop or None,
                pad_token_id=pad, output_logits=True, return_dict_in_generate=True,
                num_beams=1, repetition_penalty=None, temperature=None, top_p=None, top_k=None,
            )
            logits = out.logits[0][0]  # [V] first step: the patched position
            # generate pads a finished sequence; the engine stops at eos too
            result.token_ids = trim_at_stop(out.sequences[0, recipient_ids.shape[1]:].tolist(), stop)
        else:
            logits = model(input_ids=recipient_ids, use_cache=False).logits[0, -1]  # [V]
    result.logits = logits.float().cpu()
    if option_token_ids is not None:
        result.option_logprobs = option_logprobs(logits, option_token_ids)
    return result


def run_grid(model, tokenizer, donors: list[str], recipients: list[str], cells: list[Cell],
             module: str, max_new_tokens: int = 20,
             option_token_ids: list[list[list[int]]] | None = None) -> list[list[CellResult]]:
    """The same contract as engine.run_grid, one cell and one instance at a time."""
    return [
        [run_cell(model, tokenizer, donor, recipient, cell, module, max_new_tokens,
                  None if option_token_ids is None else option_token_ids[b])
         for cell in [VANILLA, *cells]]
        for b, (donor, recipient) in enumerate(zip(donors, recipients))
    ]

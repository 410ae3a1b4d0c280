"""The grid written the way an experienced nnsight (0.8) user writes it: a peer nobody here designed.

- `run_nnsight`: per instance one donor trace saving every layer's module output at the last
  token; then every cell of the instance as a row of one `generate` over the full recipient
  prompt, patched in the prefill only (`tracer.iter[0]`) by one indexed assignment per target
  layer (`layers[j].mlp.output[rows_j, -1, :] = donor[...]`); scoring is one trace.
- `run_nnsight_prefix`: the stronger variant: the recipient prefix (all but the last token) runs
  once into a `DynamicCache` (HF's prompt-cache reuse), repeated for the rows, and only the last
  token is fed with the patch.
Same contract as `engine.hf.run_grid` (per instance [vanilla, *cells]). nnsight is an optional extra.
"""
from __future__ import annotations

import copy

import torch

from ..cells import VANILLA
from ..engine.architectures import lookup
from ..engine.contract import CellResult, eos_ids, record_next_token, trim_at_stop


def available() -> bool:
    try:
        import nnsight  # noqa: F401
    except ImportError:
        return False
    return True


def _envoy_module(wrapped, model, module: str, layer: int):
    """The nnsight envoy of the module a cell replaces (architecture registry paths)."""
    arch = lookup(model)
    envoy = wrapped
    for part in arch.layers.split("."):
        envoy = getattr(envoy, part)
    return getattr(envoy[layer], arch.ffn if module == "ffn" else arch.attn)


def _module_output(envoy, module: str):
    return envoy.output if module == "ffn" else envoy.output[0]  # attention returns (out, weights)


def _by_target(cells):
    """target layer -> (rows [k], source layers [k]) for rows laid out as [vanilla, *cells]."""
    groups: dict[int, tuple[list[int], list[int]]] = {}
    for r, cell in enumerate(cells):
        if cell != VANILLA:
            rows, sources = groups.setdefault(cell.target_layer, ([], []))
            rows.append(r)
            sources.append(cell.source_layer)
    return groups


def wrap(model, tokenizer):
    from nnsight import TransformersModel

    return TransformersModel(model, tokenizer=tokenizer)


def _donor_values(wrapped, model, ids: torch.Tensor, module: str) -> torch.Tensor:
    """One trace saving every layer's module output at the last donor token: [L, d]."""
    import nnsight

    layers = model.config.num_hidden_layers
    with wrapped.trace(ids):
        values = nnsight.save([])
        for layer in range(layers):
            values.append(_module_output(_envoy_module(wrapped, model, module, layer), module)[0, -1, :])
    return torch.stack(list(values))


@torch.inference_mode()
def run_nnsight(wrapped, model, tokenizer, donors, recipients, cells, module, max_new_tokens=20,
                option_token_ids=None, reuse_prefix: bool = False):
    if module not in ("ffn", "attn"):
        raise ValueError("the nnsight peer patches ffn or attn")
    all_cells = [VANILLA, *cells]
    groups = _by_target(all_cells)
    stop = sorted(eos_ids(model, tokenizer))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop or [0])[0]
    out = []
    for b, (donor, recipient) in enumerate(zip(donors, recipients)):
        values = _donor_values(wrapped, model, tokenizer(donor, return_tensors="pt").input_ids.to(model.device),
                               module)  # [L, d]
        ids = tokenizer(recipient, return_tensors="pt").input_ids.to(model.device)  # [1, T]
        rows = ids.expand(len(all_cells), -1)  # [R, T]
        kwargs = {}
        if reuse_prefix and ids.shape[1] > 1:
            from transformers import DynamicCache

            cache = DynamicCache(config=model.config)
            model(input_ids=ids[:, :-1], past_key_values=cache, use_cache=True)
            rows_cache = copy.deepcopy(cache)
            rows_cache.batch_repeat_interleave(len(all_cells))
            kwargs["past_key_values"] = rows_cache
        patches = {j: (torch.tensor(r, device=model.device), values[s]) for j, (r, s) in groups.items()}
        results = [CellResult(cell) for cell in all_cells]
        if max_new_tokens > 0:
            with wrapped.generate(rows, attention_mask=torch.ones_like(rows), max_new_tokens=max_new_tokens,
                                  do_sample=False, eos_token_id=stop or None, pad_token_id=pad, **kwargs) as tracer:
                for _step in tracer.iter[0]:
                    for j, (patch_rows, patch_values) in patches.items():
                        _module_output(_envoy_module(wrapped, model, module, j), module)[patch_rows, -1, :] = \
                            patch_values
                    logits = wrapped.lm_head.output[:, -1, :].save()
                sequences = tracer.result.save()
            for r, result in enumerate(results):
                result.token_ids = trim_at_stop(sequences[r, ids.shape[1]:].tolist(), stop)
        else:
            inputs = rows[:, -1:] if "past_key_values" in kwargs else rows
            with wrapped.trace(inputs, **kwargs):
                for j, (patch_rows, patch_values) in patches.items():
                    _module_output(_envoy_module(wrapped, model, module, j), module)[patch_rows, -1, :] = patch_values
                logits = wrapped.lm_head.output[:, -1, :].save()
        record_next_token(results, logits, option_token_ids[b] if option_token_ids else None)
        out.append(results)
    return out

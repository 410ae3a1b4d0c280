"""Rows that equal another row below their target layer share its computation.

A cell i -> j replaces a module's output at layer j at the recipient's last prompt
token (decoding step 0). What a row computes below that is some other row's too:
- step 0 (the patched token): layers < j are vanilla's; the patch has not happened;
- a generated token: a layer's keys and values come from its input, upstream of
  the replaced module, so at layers <= j the patched token's keys and values are
  vanilla's, and (by induction over the steps) a generated token's state at layers
  <= j depends only on the tokens generated so far. It equals that of any row of
  the same instance with the same generated tokens and a target layer >= j, vanilla
  (target "above every layer") included.
So at layer l a row is computed by itself when its target layer is below l (at l
or below in step 0); every other row belongs to a group of equal rows (same
instance, same generated tokens) and takes its group's first row's result. Rows
that have finished (stop token) compute nothing. On real models most cells decode
vanilla's tokens, and even on random ones few distinct continuations appear.

Per layer the computed rows of each instance are padded to a common count m (the
cascade attention folds an instance's rows together), so a layer runs B * m rows
instead of R = B * n. The decoder layers are HF's own: hooks only pick their input
rows and spread their output back; the rows' cache (`cascade.OwnTokensLayer`)
spreads the new keys/values to every row and hands the layer those of its rows.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from .architectures import decoder_layers


@dataclass
class RowPlan:
    """One layer's rows for one forward: R rows, B * m of them computed."""
    active: torch.Tensor  # [B * m] long: the rows the layer computes (instance b's in slots b*m .. b*m+m-1)
    spread: torch.Tensor  # [R] long: the slot in `active` whose result each row takes


class RowSharing:
    """Which rows each layer computes, kept up to date as the rows decode.

    targets [R]: each row's target layer (num_layers for vanilla), rows laid out
    b * n + c. `plans[l]` is layer l's plan for the next forward, or None when every
    row computes itself.
    """

    def __init__(self, targets: np.ndarray, batch: int, device, num_layers: int):
        self.targets = np.asarray(targets, dtype=np.int64)  # [R]
        self.rows = len(self.targets)
        self.batch, self.n = batch, self.rows // batch
        self.device, self.num_layers = device, num_layers
        self.history = np.repeat(np.arange(batch), self.n)  # [R] id of (instance, generated tokens)
        self.finished = np.zeros(self.rows, dtype=bool)  # [R]
        self.plans: list[RowPlan | None] = [None] * num_layers
        self.computed = 0  # rows computed, summed over layers and forwards (for the bench)

    def plan(self, first_step: bool) -> None:
        """Plans for the next forward: step 0 (the patched token) or a generated token."""
        self.plans = [self._plan_layer(layer, first_step) for layer in range(self.num_layers)]

    def advance(self, tokens: np.ndarray, finished: np.ndarray) -> None:
        """Record the tokens [R] the rows just chose and which rows are done."""
        pair = self.history * (int(tokens.max()) + 1) + tokens
        self.history = np.unique(pair, return_inverse=True)[1].reshape(-1)
        self.finished = np.asarray(finished, dtype=bool)

    def _plan_layer(self, layer: int, first_step: bool) -> RowPlan | None:
        rows, n, batch = self.rows, self.n, self.batch
        own = self.targets <= layer if first_step else self.targets < layer  # [R]
        live = ~self.finished
        keys = np.where(own, np.arange(rows), rows + self.history)[live]  # group key per live row
        if len(keys) == 0:
            self.computed += rows
            return None
        _, first, group = np.unique(keys, return_index=True, return_inverse=True)
        live_rows = np.flatnonzero(live)
        leaders = live_rows[first]  # one row per group (its first), ascending keys
        leader_of = np.zeros(rows, dtype=np.int64)
        leader_of[live_rows] = leaders[group.reshape(-1)]
        leaders = np.sort(leaders)
        instance = leaders // n
        counts = np.bincount(instance, minlength=batch)
        m = max(int(counts.max()), 1)
        if m == n:  # some instance needs all its rows: no saving in this layer's shape
            self.computed += rows
            return None
        slot = np.arange(len(leaders)) - np.repeat(np.cumsum(counts) - counts, counts)  # rank within instance
        pad = np.arange(batch) * n  # an instance with no live row: its first row (never read)
        pad[instance[slot == 0]] = leaders[slot == 0]  # else its first computed row
        active = np.repeat(pad, m).reshape(batch, m)  # [B, m]
        active[instance, slot] = leaders
        position = np.zeros(rows, dtype=np.int64)
        position[leaders] = instance * m + slot
        spread = position[leader_of]
        spread[self.finished] = (np.flatnonzero(self.finished) // n) * m  # any row: never read
        self.computed += batch * m
        return RowPlan(torch.from_numpy(active.reshape(-1)).to(self.device),
                       torch.from_numpy(spread).to(self.device))


def _pick(value, rows: int, index: torch.Tensor):
    """`value` with every tensor whose first dimension is the rows cut to `index` (tuples, dicts too)."""
    if torch.is_tensor(value):
        return value.index_select(0, index.to(value.device)) if value.dim() and value.shape[0] == rows else value
    if isinstance(value, tuple):
        return tuple(_pick(v, rows, index) for v in value)
    if isinstance(value, list):
        return [_pick(v, rows, index) for v in value]
    if isinstance(value, dict):
        return {k: _pick(v, rows, index) for k, v in value.items()}
    return value


@contextmanager
def share_rows(model, sharing: RowSharing) -> Iterator[None]:
    """Inside the block each decoder layer runs only its plan's rows (hooks removed on exit).

    Input: every per-row tensor argument [R, ...] (hidden states [R, q, d], position
    ids and embeddings) is cut to the plan's rows [B * m, ...]; output [B * m, q, d] is
    spread back to [R, q, d], so the model between layers always holds every row.
    """
    handles = []
    try:
        for layer, module in enumerate(decoder_layers(model)):
            def narrow(_mod, args, kwargs, layer=layer):
                plan = sharing.plans[layer]
                if plan is None:
                    return None
                return _pick(args, sharing.rows, plan.active), _pick(kwargs, sharing.rows, plan.active)

            def widen(_mod, _args, _kwargs, output, layer=layer):
                plan = sharing.plans[layer]
                if plan is None:
                    return None
                hidden = output[0] if isinstance(output, tuple) else output  # [B * m, q, d]
                hidden = hidden.index_select(0, plan.spread.to(hidden.device))  # [R, q, d]
                return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

            handles.append(module.register_forward_pre_hook(narrow, with_kwargs=True))
            handles.append(module.register_forward_hook(widen, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()

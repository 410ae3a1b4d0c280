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
So at layer l a row computes by itself when its target layer is below l (at l or
below in step 0); the other rows form groups of equal rows (same instance, same
generated tokens), and one row, the group's leader, computes for the group. Rows
that have finished (stop token) compute nothing. On real models most cells decode
vanilla's tokens, and even on random ones few distinct continuations appear.

Layout. Rows are cell-major, row r = c * B + b (cell c, instance b), R = n * B. A
layer computes m * B slots, slot k * B + b holding a leader of instance b (or
padding), so the cascade attention folds an instance's slots as it folds its rows.
A group keeps its slot from step to step: the layer's own-token cache
(`own_cache.OwnTokensLayer`) is slot-indexed, appends one step to the first m * B
slots in place and hands the layer a view, no gather. When a group splits (its
rows generated different tokens), each new group gets a free slot and a copy of
the old slot's past keys/values (they were the same rows until now).

The decoder layers are HF's own: hooks only pick their input rows and spread their
output back to all R rows (`share_rows`).
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from .architectures import decoder_layers
from .transfers import Counters, to_device

# Re-pack a layer's slots when more than this share of its width is free slots that
# packing would remove (groups merged at step 1, finished rows): each moved group's
# past keys/values are copied once, instead of computing a padding slot every step.
REPACK = 0.05


@dataclass
class PlanningCounts(Counters):
    """Host planning between forwards, which the device waits for (the bench and the GPU check read it)."""
    planned: int = 0  # forwards with at least one layer planned afresh
    reused: int = 0  # forwards where every layer kept its plan (no group split, no row finished)
    seconds: float = 0.0  # host time spent planning


PLANNING = PlanningCounts()


@dataclass
class RowPlan:
    """One layer's rows for one forward: R rows, m * B slots computed."""
    active: torch.Tensor  # [m * B] long: the row whose input each slot computes (padding: any row of b)
    spread: torch.Tensor  # [R] long: the slot whose result each row takes
    copies: tuple[torch.Tensor, torch.Tensor] | None = None  # (to slots, from slots): past keys/values to copy
    whole: bool = False  # every row computes itself in its own slot: the layer runs all R rows as they are


@dataclass
class _Slots:
    """A layer's slot table between forwards."""
    leader: np.ndarray  # [capacity] row computed in each slot, -1 when free
    slot_of: np.ndarray  # [R] the slot each row's keys/values live in
    width: int = 0  # m: slots per instance in use


class RowSharing:
    """Which rows each layer computes, kept up to date as the rows decode.

    targets [R]: each row's target layer (num_layers for vanilla), rows laid out
    c * B + b. `plans[l]` is layer l's plan for the next forward, or None (sharing
    off): every row computes itself.
    """

    def __init__(self, targets: np.ndarray, batch: int, device, num_layers: int):
        self.targets = np.asarray(targets, dtype=np.int64)  # [R]
        self.rows, self.batch = len(self.targets), batch
        self.device, self.num_layers = device, num_layers
        self.instance = np.arange(self.rows) % batch  # [R]
        self.history = self.instance.copy()  # [R] id of (instance, generated tokens)
        self.finished = np.zeros(self.rows, dtype=bool)  # [R]
        self.plans: list[RowPlan | None] = [None] * num_layers
        self.slots: list[_Slots] = []
        self.computed = 0  # slots computed, summed over layers and forwards
        self._finished_changed = False  # a row finished since the last `plan`
        self._planned_decode = False  # the current plans are for a generated token (not step 0)
        self._slots_per_layer = np.zeros(num_layers, dtype=np.int64)  # [L] slots each layer's plan computes
        self._groups_per_layer = np.zeros(num_layers, dtype=np.int64)  # [L] groups of shared rows at the last plan
        self.replanned = 0  # layers planned afresh for the current forward (the others kept their plans)

    def plan(self, first_step: bool) -> None:
        """Plans for the next forward: step 0 (the patched token) or a generated token.

        Every planned layer's index arrays reach the device in one transfer. Between generated
        tokens, a layer whose groups did not split and where no row finished keeps its plan (without
        copies): groups only ever split, so a layer whose rows that share (target layer >= l) fall
        into as many groups as at its last plan has the same groups, slots and leaders. When no layer
        changed, nothing is planned or transferred.
        """
        started = time.perf_counter()
        try:
            self._plan(first_step)
        finally:
            PLANNING.seconds += time.perf_counter() - started

    def _plan(self, first_step: bool) -> None:
        if first_step:
            self.slots = [_Slots(np.full(self.rows, -1), np.zeros(self.rows, dtype=np.int64))
                          for _ in range(self.num_layers)]
            stale = np.arange(self.num_layers)
        else:
            groups = self._shared_groups()
            if self._planned_decode and not self._finished_changed:
                stale = np.flatnonzero(groups != self._groups_per_layer)
            else:  # the first generated token (step 0 shares by another rule), or a row finished
                stale = np.arange(self.num_layers)
            self._groups_per_layer = groups
        self.replanned = len(stale)  # layers planned afresh for this forward
        for layer in range(self.num_layers):  # kept plans copy nothing more
            plan = self.plans[layer]
            if plan is not None and plan.copies is not None:
                self.plans[layer] = RowPlan(plan.active, plan.spread, whole=plan.whole)
        if len(stale) == 0:
            PLANNING.reused += 1
        else:
            PLANNING.planned += 1
            self._plan_layers(stale, first_step)
        self._planned_decode = not first_step
        self._finished_changed = False
        self.computed += int(self._slots_per_layer.sum())

    @property
    def steady(self) -> bool:
        """The plans in place may serve another forward: they are a generated token's (step 0's
        compute more), copy no keys/values (a copy must not run twice), and no row finished since they
        were made (finished rows should stop computing)."""
        return (self._planned_decode and not self._finished_changed
                and all(plan is None or plan.copies is None for plan in self.plans))

    def consistent(self, tokens: np.ndarray, finished: np.ndarray) -> bool:
        """Whether the plans in place compute the next forward exactly for every row not `finished`,
        after the rows chose `tokens` [R]: in every layer each such row chose the token of the row its
        slot computes (so no group of shared rows split). Rows that finished may compute anything."""
        live = np.flatnonzero(~np.asarray(finished, dtype=bool))
        for plan, table in zip(self.plans, self.slots):
            if plan is None or plan.whole:
                continue
            leaders = table.leader[table.slot_of[live]]  # [live] the row each live row's slot computes
            if (tokens[leaders] != tokens[live]).any():
                return False
        return True

    def reuse(self) -> None:
        """The plans in place served one more forward (one run ahead on them and kept)."""
        self.computed += int(self._slots_per_layer.sum())

    def _plan_layers(self, layers: np.ndarray, first_step: bool) -> None:
        """New plans for `layers`, their index arrays in one host->device transfer."""
        host = [self._plan_layer(int(layer), first_step) for layer in layers]
        arrays = [array for plan in host for array in plan if array is not None]
        flat = to_device(np.concatenate(arrays), self.device)  # one host->device copy for all of them
        views = iter(flat.split([len(array) for array in arrays]))  # views, in the order of `arrays`
        every = np.arange(self.rows)
        for layer, (active, spread, copy_to, _copy_from) in zip(layers, host):
            whole = len(active) == self.rows and bool((active == every).all() and (spread == every).all())
            active, spread = next(views), next(views)
            copies = (next(views), next(views)) if copy_to is not None else None
            self.plans[layer] = RowPlan(active, spread, copies, whole)

    def _shared_groups(self) -> np.ndarray:
        """[L] for each layer l, the groups among the live rows that share there (target layer >= l,
        at a generated token): a group is present at l when its highest target layer is >= l."""
        live = ~self.finished
        top = np.full(int(self.history.max()) + 1, -1)  # [G] highest target layer in each group
        np.maximum.at(top, self.history[live], self.targets[live])
        present = top[top >= 0]
        at_least = np.bincount(np.minimum(present, self.num_layers), minlength=self.num_layers + 1)
        return np.cumsum(at_least[::-1])[::-1][:self.num_layers]  # [L]: groups with top >= l

    def advance(self, tokens: np.ndarray, finished: np.ndarray) -> None:
        """Record the tokens [R] the rows just chose and which rows are done."""
        pair = self.history * (int(tokens.max()) + 1) + tokens
        self.history = np.unique(pair, return_inverse=True)[1].reshape(-1)
        finished = np.asarray(finished, dtype=bool)
        self._finished_changed |= not bool((finished == self.finished).all())  # until the next `plan`
        self.finished = finished.copy()

    def _groups(self, layer: int, first_step: bool) -> tuple[np.ndarray, np.ndarray]:
        """(first row of each group [G], group of each live row [R] (-1: finished))."""
        own = self.targets <= layer if first_step else self.targets < layer  # [R]
        keys = np.where(own, np.arange(self.rows), self.rows + self.history)
        live = np.flatnonzero(~self.finished)
        _, first, group = np.unique(keys[live], return_index=True, return_inverse=True)
        order = np.argsort(first)  # groups in the order of their first rows, so slots follow the rows
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        of_row = np.full(self.rows, -1)
        of_row[live] = rank[group.reshape(-1)]
        return live[first[order]], of_row

    def _fill(self, first: np.ndarray, slot: np.ndarray, width: int) -> int:
        """Give each group without a slot (-1) its instance's lowest free slot; returns the width m."""
        batch = self.batch
        taken = np.zeros(self.rows, dtype=bool)
        taken[slot[slot >= 0]] = True
        needy = np.flatnonzero(slot < 0)
        for b in range(batch):  # few instances: a loop over them is cheap
            mine = needy[first[needy] % batch == b]
            if len(mine) == 0:
                continue
            columns = np.arange(b, width * batch, batch)
            free = columns[~taken[columns]]
            extra = max(0, len(mine) - len(free))
            slot[mine] = np.concatenate([free, (width + np.arange(extra)) * batch + b])[:len(mine)]
        return int(slot.max()) // batch + 1 if len(slot) else 1  # up to the highest slot in use

    def _plan_layer(self, layer: int, first_step: bool) -> tuple[np.ndarray, ...]:
        """(active [m * B], spread [R], copy-to slots or None, copy-from slots or None), on the host."""
        batch, table = self.batch, self.slots[layer]
        first, group_of = self._groups(layer, first_step)  # [G], [R]
        slot = np.full(len(first), -1)  # [G]
        width = 0
        if not first_step:  # a group keeps its rows' slot; of groups split from one slot, the first keeps it
            past = table.slot_of[first]  # [G] where each group's past keys/values are
            _, keeper = np.unique(past, return_index=True)
            slot[keeper] = past[keeper]
            width = table.width
        width = self._fill(first, slot, width)
        packed = int(np.bincount(first % batch, minlength=batch).max()) if len(first) else 1
        if not first_step and width - packed > REPACK * width:  # many free slots (merged or finished groups)
            slot[:] = -1
            width = self._fill(first, slot, 0)
        leader = np.full(len(table.leader), -1)
        leader[slot] = first
        copy_to = copy_from = None
        if not first_step:  # a group in a new slot (split off, or packed) starts with its old slot's past
            moved = slot != past
            if moved.any():
                copy_to, copy_from = slot[moved], past[moved]
        slot_of = self.instance.copy()  # finished rows: slot b (never read)
        live = group_of >= 0
        slot_of[live] = slot[group_of[live]]
        table.leader, table.slot_of, table.width = leader, slot_of, width
        active = leader[:width * batch].copy()
        padding = active < 0
        active[padding] = np.arange(width * batch)[padding] % batch  # any row of that instance: row b
        self._slots_per_layer[layer] = width * batch
        return active, slot_of, copy_to, copy_from


# Decoder-layer kwargs that depend only on a row's position. All rows of an instance sit
# at one position, and slot s computes a row of instance s mod B, as row s is: the first
# m * B rows carry the slots' positions, a view instead of a gather.
POSITIONAL = ("position_ids", "position_embeddings")


def _pick(value, rows: int, index: torch.Tensor | slice):
    """`value` with every tensor whose first dimension is the rows cut to `index` (tuples, dicts too):
    a gather for a tensor of rows, a view for a slice."""
    if torch.is_tensor(value):
        if not value.dim() or value.shape[0] != rows:
            return value
        return value[index] if isinstance(index, slice) else value.index_select(0, index.to(value.device))
    if isinstance(value, tuple):
        return tuple(_pick(v, rows, index) for v in value)
    if isinstance(value, list):
        return [_pick(v, rows, index) for v in value]
    if isinstance(value, dict):
        return {k: _pick(v, rows, index) for k, v in value.items()}
    return value


@contextmanager
def share_rows(model, sharing: RowSharing) -> Iterator[None]:
    """Inside the block each decoder layer runs only its plan's slots (hooks removed on exit).

    Input: every per-row tensor argument [R, ...] (hidden states [R, q, d], position
    ids and embeddings) is cut to the plan's slots [m * B, ...]; output [m * B, q, d]
    is spread back to [R, q, d], so the model between layers always holds every row.
    """
    handles = []
    try:
        for layer, module in enumerate(decoder_layers(model)):
            def narrow(_mod, args, kwargs, layer=layer):
                plan = sharing.plans[layer]
                if plan is None or plan.whole:
                    return None
                front = slice(0, len(plan.active))
                kwargs = {k: _pick(v, sharing.rows, front if k in POSITIONAL else plan.active)
                          for k, v in kwargs.items()}
                return _pick(args, sharing.rows, plan.active), kwargs

            def widen(_mod, _args, _kwargs, output, layer=layer):
                plan = sharing.plans[layer]
                if plan is None or plan.whole:
                    return None
                hidden = output[0] if isinstance(output, tuple) else output  # [m * B, q, d]
                hidden = hidden.index_select(0, plan.spread.to(hidden.device))  # [R, q, d]
                return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

            handles.append(module.register_forward_pre_hook(narrow, with_kwargs=True))
            handles.append(module.register_forward_hook(widen, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()

"""The rows' own-token cache: a cache layer per decoder layer that holds only a row's own tokens (its cell's
last prompt token and the tokens it generated), the prefix staying in `cascade.SharedPrefix`; and the store
whose memory successive chunks and grids reuse. Shapes: R rows, K_h KV heads, s own tokens, D head dim."""
from __future__ import annotations

import math

import torch
from transformers.cache_utils import Cache, DynamicLayer


class OwnTokensLayer(DynamicLayer):
    """A cache layer holding only the rows' own tokens, preallocated for `capacity` of them.

    The prefix lives in `SharedPrefix`, so this is all HF's attention module sees as
    keys and values: [R, K_h, s, D] views of one step-major [capacity, R, K_h, D] buffer. Appending
    writes one contiguous block in place; a growing torch.cat per step would copy the whole cache every
    step (O(steps^2)). (A row-major [R, K_h, capacity, D] buffer, one call to write and one to read, was
    tried: generation on the bench grid was no faster.)
    """

    def __init__(self, capacity: int, sharing=None, index: int = 0, store: OwnTokenStore | None = None):
        super().__init__()
        self.capacity = capacity
        self.length = 0
        self.sharing, self.index = sharing, index  # `sharing.RowSharing`: the layer may run fewer rows
        self.store = store

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        _, heads, _, dim = key_states.shape
        rows = self.sharing.rows if self.sharing is not None else key_states.shape[0]
        # step-major [capacity, R, K_h, D]: appending a step writes one contiguous block; with
        # sharing, slot-indexed (a layer computes the first m * B slots, see sharing.py)
        shapes = (self.capacity, rows, heads, dim), (self.capacity, rows, heads, value_states.shape[-1])
        if self.store is not None:
            self.key_buffer, self.value_buffer = self.store.take(self.index, shapes, key_states)
        else:
            self.key_buffer, self.value_buffer = (key_states.new_empty(shape) for shape in shapes)
        # the same memory as [rows, K_h, capacity, D] views: a step's write and the read are `narrow`s of
        # these (a call each, where tensor indexing with a tuple of slices costs several)
        self.key_rows, self.value_rows = (buffer.permute(1, 2, 0, 3) for buffer in (self.key_buffer, self.value_buffer))
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """New keys/values [A, K_h, q, D] of the A rows (or `sharing` slots) the layer computes
        -> their own keys/values [A, K_h, s, D], a view of the buffer's first A slots.

        A `RowSharing` plan may first copy past keys/values from slot to slot (a group of
        equal rows split and the new group's slot starts with the old one's past).
        """
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        plan = self.sharing.plans[self.index] if self.sharing is not None else None
        if plan is not None and plan.copies is not None and self.length:
            to, source = (index.to(self.key_buffer.device) for index in plan.copies)  # layers may sit on several GPUs
            self.key_buffer[:self.length, to] = self.key_buffer[:self.length, source]
            self.value_buffer[:self.length, to] = self.value_buffer[:self.length, source]
        end, slots = self.length + key_states.shape[-2], key_states.shape[0]
        if end > self.capacity:
            raise RuntimeError(f"own-token cache holds {self.capacity} tokens, asked for {end}")
        keys, values = self.key_rows.narrow(2, 0, end), self.value_rows.narrow(2, 0, end)  # [rows, K_h, s, D]
        if slots != keys.shape[0]:
            keys, values = keys.narrow(0, 0, slots), values.narrow(0, 0, slots)  # [A, K_h, s, D]
        keys.narrow(2, self.length, end - self.length).copy_(key_states)
        values.narrow(2, self.length, end - self.length).copy_(value_states)
        self.length = end
        self.keys, self.values = keys, values
        return keys, values

    def get_seq_length(self) -> int:
        return self.length

    def rewind(self, tokens: int) -> None:
        """Forget the last `tokens` appended (a forward run ahead whose plans turned out stale): the next
        update writes over them."""
        self.length -= tokens


class OwnTokenStore:
    """Own-token key/value memory that the caches of successive chunks and grids reuse.

    On a CPU, fresh memory costs a page fault per 4 KiB page on first touch: a new
    cache per chunk took ~22,000 of them per bench grid (16 layers, 514 rows, 21
    tokens: 88 MB), ~3% of its time. A store keeps each layer's largest buffers and
    hands out views of their front. One grid at a time per store (the engine's).
    """

    def __init__(self):
        self._flat: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> flat key, value storage

    def take(self, layer: int, shapes, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Buffers of `shapes` (keys, values) for `layer`, in `like`'s dtype and device."""
        needs = [math.prod(shape) for shape in shapes]
        flat = self._flat.get(layer)
        if flat is None or any(f.numel() < need or f.dtype != like.dtype or f.device != like.device
                               for f, need in zip(flat, needs)):
            flat = tuple(like.new_empty(need) for need in needs)
            self._flat[layer] = flat
        return tuple(f[:need].view(shape) for f, need, shape in zip(flat, needs, shapes))

    def nbytes(self) -> int:
        return sum(f.numel() * f.element_size() for pair in self._flat.values() for f in pair)


def own_tokens_cache(num_layers: int, capacity: int, sharing=None, store: OwnTokenStore | None = None) -> Cache:
    """The rows' cache: one `OwnTokensLayer` per decoder layer (buffers from `store` if given)."""
    return Cache(layers=[OwnTokensLayer(capacity, sharing, index, store) for index in range(num_layers)])


def rewind(cache: Cache, tokens: int) -> None:
    """Forget the last `tokens` appended to every layer of an `own_tokens_cache`."""
    for layer in cache.layers:
        layer.rewind(tokens)

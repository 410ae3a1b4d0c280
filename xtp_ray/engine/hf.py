"""The fast grid engine (SPEC 6): no L^2 full passes, cost linear in the cells.

Per batch of instances (B of them, left padded, recipient length T):
1.-2. one forward over the donors and the recipients' prefixes together (2B rows,
   `donors_and_prefix`) captures the donor value of every layer at the donors' last
   token and builds the recipients' prefix KV over their P = T - 1 prefix tokens,
   shared by every cell (patching the last position leaves every earlier position
   untouched under causal attention). It is stored once per instance and layer;
3. the cells of a chunk are batch rows: n cells per instance, R = n * B rows (cell-major), each
   row a copy of its instance's last prompt token at the same position id. The
   target layer's module output of each row is replaced by its source layer's donor
   value. Attention is `cascade.py`'s: each instance's rows' queries folded into one
   product against its prefix, plus each row against its own keys, merged exactly by
   log-sum-exp. A row's cache holds only its own tokens; the prefix is never copied;
4. greedy decoding continues every row: each step adds one own token per row. On a GPU each
   forward is queued before the host has read the tokens it follows from, and kept when they
   prove its row plans exact (`_decode`).

The model's own HF modules do all the computing; the engine lays out rows, position
ids and the shared prefix. Results equal `reference.py` (one donor forward + one
patched `generate` per cell). Per forward the work is linear in the rows: the
prefix scores are [B, K_h, n * G, P], the own scores [R, H, 1, steps + 1].
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from transformers import DynamicCache

from ..cells import VANILLA, Cell
from ..names import DEFAULT_OWN_KERNEL
from . import footprint
from .architectures import num_layers, submodule
from .capture import capture_last_token, replace_rows
from .cascade import SharedPrefix, cascade_attention, check_own_kernel
from .contract import CellResult, encode_left_padded, eos_ids, option_logprobs_all
from .own_cache import OwnTokenStore, own_tokens_cache, rewind
from .sharing import RowSharing, share_rows
from .transfers import Counters, HostCopy

# Rows (instances x cells) per forward when decoding. The cost per row no longer grows
# with the rows, so this only bounds memory; chosen on the bench model (see README).
DEFAULT_ROWS_GENERATE = 1024
DEFAULT_ROWS_SCORE = 4096


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids [B, T] that skip left padding (the same as an unpadded run)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def sliding_window(model) -> int | None:
    """The smallest sliding window among the model's attention layers (as its own cache sees them), if any."""
    windows = [layer.sliding_window for layer in DynamicCache(config=model.config).layers
               if getattr(layer, "is_sliding", False)]
    return min(windows) if windows else None


def _dims(model) -> dict:
    """`footprint.dims` of the model's config, its layers as the registry finds them, and its element size."""
    return {**footprint.dims(model.config.get_text_config()), "layers": num_layers(model),
            "element": torch.finfo(model.dtype).bits // 8}


def free_accelerator_bytes(device, reusable: int = 0) -> int | None:
    """What a chunk may use on a GPU: 80% of the memory free now, counting as free what torch's
    allocator holds unused and `reusable` bytes the engine's own store will hand out again
    (None on CPU)."""
    if torch.device(device).type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(0.8 * (free + cached + reusable))


def balanced_chunks(total: int, most: int) -> list[tuple[int, int]]:
    """[start, end) spans covering `total` cells in the fewest chunks of at most `most`, their sizes
    differing by one at most (1,025 cells at 1,024: 513 + 512, not 1,024 + a 1-cell tail that
    pays every decode step's fixed cost for one row)."""
    count = -(-total // most)
    base, extra = divmod(total, count)
    spans, start = [], 0
    for k in range(count):
        end = start + base + (k < extra)
        spans.append((start, end))
        start = end
    return spans


@torch.inference_mode()
def capture_donors(model, tokenizer, donors: list[str], module: str) -> torch.Tensor:
    """Donor values of every layer at the last donor token: [B, L, d]."""
    layers = list(range(num_layers(model)))
    ids, mask = encode_left_padded(tokenizer, donors, model.device)
    with capture_last_token(model, module, layers) as store:
        model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=False)
    return _by_layer(model, store)


def _by_layer(model, store: dict[int, torch.Tensor]) -> torch.Tensor:
    """`capture_last_token`'s values (layer -> [N, d]) as one [N, L, d] on the model's first device
    (layers may sit on several GPUs)."""
    return torch.stack([store[layer].to(model.device) for layer in range(num_layers(model))], dim=1)


def _left_pad(tensor: torch.Tensor, width: int, value: int) -> torch.Tensor:
    """[B, t] -> [B, width], padded on the left with `value`."""
    return torch.nn.functional.pad(tensor, (width - tensor.shape[1], 0), value=value)


@torch.inference_mode()
def donors_and_prefix(model, tokenizer, donors: list[str], ids: torch.Tensor, mask: torch.Tensor,
                      pos: torch.Tensor, module: str) -> tuple[torch.Tensor, SharedPrefix]:
    """The donors and the recipients' prefixes in one forward: (donor values [B, L, d], shared prefix).

    ids, mask, pos: the recipients' [B, T]. 2B rows left padded to one width W: the B donors (whole;
    every layer's donor value is taken at their last token) and the B recipient prefixes (all but the
    last token), whose K/V become each instance's prefix: per layer the recipients' rows cut to their
    last P = T - 1 positions, copied out ([B, K_h, P, D]; a sliding-window layer keeps fewer) so the
    donors' keys/values are freed. One forward instead of two: one layer stack of dispatch less, and
    products over 2B rows. Left padding leaves every row's values as alone (position ids skip it,
    masked keys weigh 0), as the donor batch and the prefill always had it.
    """
    batch, prefix_len = ids.shape[0], ids.shape[1] - 1
    donor_ids, donor_mask = encode_left_padded(tokenizer, donors, model.device)  # [B, Td]
    width = max(donor_ids.shape[1], prefix_len)
    pad = tokenizer.pad_token_id
    both_ids = torch.cat([_left_pad(donor_ids, width, pad), _left_pad(ids[:, :-1], width, pad)])  # [2B, W]
    both_mask = torch.cat([_left_pad(donor_mask, width, 0), _left_pad(mask[:, :-1], width, 0)])  # [2B, W]
    cache = DynamicCache(config=model.config)
    layers = list(range(num_layers(model)))
    with capture_last_token(model, module, layers) as store:
        model(input_ids=both_ids, attention_mask=both_mask, position_ids=positions(both_mask),
              past_key_values=cache, use_cache=True, logits_to_keep=1)
    donor_values = _by_layer(model, store)[:batch]  # [B, L, d]
    keys, values = [], []
    for index, layer in enumerate(cache.layers):  # [2B, K_h, W_l, D] -> the recipients' last min(W_l, P) positions
        kept = min(layer.keys.shape[2], prefix_len)
        # copies: the donors' half is freed with the cache
        layer_keys, layer_values = attention_kv(submodule(model, "attn", index), layer.keys[batch:, :, -kept:],
                                                layer.values[batch:, :, -kept:])
        keys.append(layer_keys)
        values.append(layer_values)
    return donor_values, SharedPrefix(keys, values, mask[:, :-1].bool(), pos[:, :-1])  # masks [B, P]


def attention_kv(attention, cached_keys: torch.Tensor, cached_values: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """What the attention function sees as keys and values, from what the module's cache layer holds (copies):
    the same, except where a module caches compressed latents and expands them before attention itself
    (DeepSeek-V3's MLA: latents [B, 1, P, r] and shared rotary keys [B, 1, P, d_rope] -> keys
    [B, H, P, d_nope + d_rope], values [B, H, P, d_v], by the module's own `expand_kv`, token by token
    as it does on every call)."""
    if hasattr(attention, "expand_kv"):
        keys, values = attention.expand_kv(cached_keys, cached_values)
        return keys.contiguous(), values.contiguous()
    return cached_keys.clone(), cached_values.clone()


def empty_prefix(model, batch: int) -> SharedPrefix:
    """The shared prefix of one-token prompts: no keys, in the shapes the attention function sees."""
    attention = submodule(model, "attn", 0)
    if hasattr(attention, "expand_kv"):  # MLA: every head its own keys; values of another head size
        heads, key_dim, value_dim = attention.num_heads, attention.qk_head_dim, attention.v_head_dim
    else:
        d = _dims(model)
        heads, key_dim, value_dim = d["kv_heads"], d["head_dim"], d["head_dim"]
    keys = torch.zeros(batch, heads, 0, key_dim, dtype=model.dtype, device=model.device)
    values = torch.zeros(batch, heads, 0, value_dim, dtype=model.dtype, device=model.device)
    nothing = torch.zeros(batch, 0, dtype=torch.long, device=model.device)
    layers = num_layers(model)
    return SharedPrefix([keys] * layers, [values] * layers, nothing.bool(), nothing)


def temperature_tuning_limit(model) -> int | None:
    """Llama 4's NoPE layers scale their queries by a function of the position that is 1 below `floor_scale`
    and counted there from the cache's length: the engine's rows hold only their own tokens in that cache,
    so it agrees with HF only while every position stays below it. None: no such layers."""
    config = model.config.get_text_config()
    if not getattr(config, "attn_temperature_tuning", False) or all(getattr(config, "no_rope_layers", None) or [1]):
        return None
    return config.floor_scale


@dataclass
class GridOptions:
    """`run_grid`'s knobs beyond its inputs, passed by name (`run_with`). cells_per_chunk: cells of each
    instance per forward (default: DEFAULT_ROWS_GENERATE / DEFAULT_ROWS_SCORE rows per forward, shared
    among the instances). keep_logits: each result's next-token logits on the host. memory_budget_mb:
    shrink chunks until `footprint.chunk_bytes` fits it. share: rows that compute alike share a slot
    (`sharing.py`). store: own-token memory reused across chunks and calls (`own_cache.OwnTokenStore`).
    plan: a dict filled with the chunking chosen. own_kernel: `cascade.own_part`'s. speculate: queue decode
    forwards ahead of the host (`_decode`; None: on a GPU)."""

    cells_per_chunk: int | None = None
    keep_logits: bool = False
    memory_budget_mb: float | None = None
    share: bool = True
    store: OwnTokenStore | None = None
    plan: dict | None = None
    own_kernel: str = DEFAULT_OWN_KERNEL
    speculate: bool | None = None


def run_grid(model, tokenizer, donors: list[str], recipients: list[str], cells: list[Cell],
             module: str, max_new_tokens: int = 20, cells_per_chunk: int | None = None,
             option_token_ids: list[list[list[int]]] | None = None,
             keep_logits: bool = False, memory_budget_mb: float | None = None,
             share: bool = True, store: OwnTokenStore | None = None,
             plan: dict | None = None, own_kernel: str = DEFAULT_OWN_KERNEL,
             speculate: bool | None = None) -> list[list[CellResult]]:
    """`run_with` with its `GridOptions` given one by one (the tests' and tools' calls)."""
    options = GridOptions(cells_per_chunk=cells_per_chunk, keep_logits=keep_logits,
                          memory_budget_mb=memory_budget_mb, share=share, store=store, plan=plan,
                          own_kernel=own_kernel, speculate=speculate)
    return run_with(model, tokenizer, donors, recipients, cells, module, max_new_tokens=max_new_tokens,
                    option_token_ids=option_token_ids, options=options)


@torch.inference_mode()
def run_with(model, tokenizer, donors: list[str], recipients: list[str], cells: list[Cell], module: str,
             max_new_tokens: int = 20, option_token_ids: list[list[list[int]]] | None = None,
             options: GridOptions | None = None) -> list[list[CellResult]]:
    """Vanilla + every cell for each (donor, recipient) pair.

    Returns, per instance, [vanilla, *cells] results. max_new_tokens=0 scores only
    (no decoding). option_token_ids[b][k] lists the token ids of option k of
    instance b. options: the knobs (`GridOptions`). Without cells_per_chunk or a memory budget, on a GPU
    chunks fit 80% of the free memory (no cap on the cells); on a CPU, the default rows per forward.
    Chunks are balanced (no small tail). share=False computes every row everywhere. The plan records the
    chunks, cells/rows per forward, the memory budget and the `footprint.chunk_bytes` estimate. speculate
    defaults to on a GPU, where the device would otherwise wait for the host between forwards; on a CPU
    nothing runs while the host waits.
    """
    options = options or GridOptions()
    cells_per_chunk, keep_logits, memory_budget_mb = (options.cells_per_chunk, options.keep_logits,
                                                      options.memory_budget_mb)
    share, store, plan, own_kernel, speculate = (options.share, options.store, options.plan, options.own_kernel,
                                                 options.speculate)
    if len(donors) != len(recipients):
        raise ValueError("donors and recipients differ in length")
    batch = len(recipients)
    if cells_per_chunk is not None and cells_per_chunk < 1:
        raise ValueError("cells_per_chunk must be positive")
    check_own_kernel(own_kernel)
    device = model.device
    ids, mask = encode_left_padded(tokenizer, recipients, device)  # [B, T]
    window = sliding_window(model)
    if window is not None and max_new_tokens + 1 >= window:
        # a row's own tokens must all lie inside the window (prefix keys are masked by position)
        raise ValueError(f"{max_new_tokens} new tokens do not fit the model's sliding window of {window}; "
                         "use the reference engine")
    pos = positions(mask)  # [B, T]
    prefix_len = ids.shape[1] - 1
    limit = temperature_tuning_limit(model)
    if limit is not None:
        # positions a forward reaches: a padded prefill row's last index, a recipient's last generated token
        longest = max(ids.shape[1] + max_new_tokens, max(len(tokenizer(d).input_ids) for d in donors)) + 1
        if longest >= limit:
            raise ValueError(f"prompts plus {max_new_tokens} new tokens reach position {longest}, past the "
                             f"floor_scale {limit} of the model's attention temperature tuning (NoPE layers), "
                             "which the hf engine does not implement there; use the reference engine")
    if prefix_len > 0:
        donor_values, shared = donors_and_prefix(model, tokenizer, donors, ids, mask, pos, module)
    else:  # one-token prompts: an empty prefix
        donor_values = capture_donors(model, tokenizer, donors, module)  # [B, L, d]
        shared = empty_prefix(model, batch)
    shared.own_kernel = own_kernel

    all_cells = [VANILLA, *cells]
    reusable = store.nbytes() if store is not None else 0
    budget = (int(memory_budget_mb * 2**20) if memory_budget_mb is not None
              else free_accelerator_bytes(device, reusable))
    if cells_per_chunk is None and budget is None:  # a CPU without a budget: the default rows per forward
        rows = DEFAULT_ROWS_GENERATE if max_new_tokens > 0 else DEFAULT_ROWS_SCORE
        cells_per_chunk = max(1, rows // batch)
    cells_per_chunk = min(cells_per_chunk or len(all_cells), len(all_cells))
    dims = _dims(model) if budget is not None or plan is not None else None  # what `footprint` sizes chunks by
    if budget is not None:
        cells_per_chunk = footprint.cells_for_budget(dims, batch, prefix_len, max_new_tokens, budget, cells_per_chunk)
    spans = balanced_chunks(len(all_cells), cells_per_chunk)
    if plan is not None:
        largest = max(end - start for start, end in spans)
        estimate = footprint.chunk_bytes(dims, dims["element"], batch, prefix_len, largest, max_new_tokens)
        plan.update(chunks=len(spans), cells_per_forward=largest, rows_per_forward=largest * batch,
                    budget_bytes=budget, estimate_bytes=estimate)
    results = [[CellResult(cell) for cell in all_cells] for _ in recipients]
    stop = eos_ids(model, tokenizer)
    speculate = device.type == "cuda" if speculate is None else speculate
    for start, end in spans:
        chunk = all_cells[start:end]
        logits, tokens = _run_chunk(model, module, chunk, donor_values, ids[:, -1], pos[:, -1], shared,
                                    max_new_tokens, stop, share, store, speculate)
        options = option_logprobs_all(logits, option_token_ids) if option_token_ids is not None else None
        kept = logits.float().cpu() if keep_logits else None
        for b, row in enumerate(results):
            for c in range(len(chunk)):
                result = row[start + c]
                if kept is not None:
                    result.logits = kept[b, c]
                if options is not None:
                    result.option_logprobs = options[b][c]
                if tokens is not None:
                    result.token_ids = tokens[b][c]
    return results


def cell_patches(chunk: list[Cell], donor_values: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """target layer -> (rows [k], donor values [k, d]) for a chunk laid out as row c * B + b."""
    batch = donor_values.shape[0]
    by_target: dict[int, list[int]] = {}
    for c, cell in enumerate(chunk):
        if cell != VANILLA:
            by_target.setdefault(cell.target_layer, []).append(c)
    patches = {}
    for j, cs in by_target.items():
        rows = torch.tensor([c * batch + b for c in cs for b in range(batch)], device=donor_values.device)
        sources = torch.tensor([chunk[c].source_layer for c in cs], device=donor_values.device)
        patches[j] = (rows, donor_values[:, sources].transpose(0, 1).reshape(len(cs) * batch, -1))  # [k * B, d]
    return patches


def _run_chunk(model, module, chunk, donor_values, last_token, last_pos, shared, max_new_tokens, stop, share=True,
               store=None, speculate=False):
    """One chunk of n cells for all B instances as R = n * B rows (row c * B + b, cell-major):
    logits [B, n, V], tokens [B][n] or None.

    With share, each layer computes only the rows that differ there (`sharing.py`);
    finished rows stop computing. With speculate, each decode forward is queued before the host has
    the tokens it follows from (`_decode`).
    """
    batch, n = last_token.shape[0], len(chunk)
    rows = batch * n
    layers = num_layers(model)
    targets = np.repeat([layers if cell == VANILLA else cell.target_layer for cell in chunk], batch)  # [R]
    sharing = RowSharing(targets, batch, last_token.device, layers)
    if share:
        sharing.plan(first_step=True)
    own = own_tokens_cache(layers, max_new_tokens + 1, sharing, store)  # rows' own tokens; the prefix stays in `shared`
    row_pos = last_pos.repeat(n)[:, None]  # [R, 1]
    patches = {j: (_slots(sharing.plans[j], rows_j), values) for j, (rows_j, values) in
               cell_patches(chunk, donor_values).items()}  # the rows' slots in their target layer's batch
    with cascade_attention(model), share_rows(model, sharing):
        with replace_rows(model, module, patches):
            out = model(input_ids=last_token.repeat(n)[:, None], position_ids=row_pos,
                        past_key_values=own, use_cache=True, xtp_prefix=replace(shared, query_positions=last_pos))
        logits = out.logits[:, -1].view(n, batch, -1).transpose(0, 1)  # [B, n, V]
        if max_new_tokens == 0:
            return logits, None

        def forward(token: torch.Tensor, step: int) -> torch.Tensor:
            """The decode forward of `step` (its input: the tokens chosen at step - 1) -> its tokens [R]."""
            out = model(input_ids=token[:, None], position_ids=row_pos + step, past_key_values=own,
                        use_cache=True, xtp_prefix=replace(shared, query_positions=last_pos + step))
            return greedy(out.logits[:, -1])

        chosen, length = _decode(forward, greedy(out.logits[:, -1]), own, sharing if share else None, rows,
                                 max_new_tokens, stop, speculate)
    generated = [[chosen[:length[c * batch + b], c * batch + b].tolist() for c in range(n)] for b in range(batch)]
    return logits, generated


@dataclass
class SpeculationCounts(Counters):
    """Decode forwards queued before the host had their input tokens: kept, or run again (the bench and
    the GPU check read it)."""
    kept: int = 0
    redone: int = 0


SPECULATION = SpeculationCounts()


def _decode(forward, next_token: torch.Tensor, own, sharing: RowSharing | None, rows: int, max_new_tokens: int,
            stop, speculate: bool) -> tuple[np.ndarray, np.ndarray]:
    """Greedy decoding of R rows from step 0's tokens [R] (on the device): (chosen [steps, R], length [R]).

    One device->host transfer per step: the chosen tokens, from which the host knows which rows
    finished and plans the next forward's row sharing. Without speculation the device waits while the
    host does that. With it, the next forward is queued first, on the plans in place, and the host then
    waits for the tokens alone (their copy is queued before that forward), so the device always has
    work. The forward is kept when the tokens show it exact (`RowSharing.consistent`: every live row
    chose its slot's token, no group split); otherwise the own-token cache forgets its token and it runs
    again on new plans. Kept or not, every live row's result is what the plans compute without
    speculation, within the rounding of a different batch composition (the tests hold both to the
    reference). It is tried when the plans in place may serve another forward (`RowSharing.steady`),
    and always without sharing, where nothing is planned.
    """
    chosen = np.zeros((max_new_tokens, rows), dtype=np.int64)  # [steps, R]
    length = np.zeros(rows, dtype=np.int64)  # [R] tokens each row generated, its stop token included
    finished = np.zeros(rows, dtype=bool)  # [R]
    stop_ids = np.array(sorted(stop), dtype=np.int64)
    for step in range(max_new_tokens):
        copy = HostCopy(next_token)
        last = step == max_new_tokens - 1
        ahead = None
        if speculate and not last and (sharing is None or sharing.steady):
            ahead = forward(next_token, step + 1)  # on the plans in place
        chosen[step] = copy.wait()
        length += ~finished
        finished |= np.isin(chosen[step], stop_ids)
        if last or finished.all():
            break
        kept = ahead is not None and (sharing is None or sharing.consistent(chosen[step], finished))
        if sharing is not None:
            sharing.advance(chosen[step], finished)
            if kept:
                sharing.reuse()
            else:
                sharing.plan(first_step=False)
        if kept:
            SPECULATION.kept += 1
            next_token = ahead
            continue
        if ahead is not None:  # computed on plans that no longer hold
            SPECULATION.redone += 1
            rewind(own, 1)
        next_token = forward(next_token, step + 1)
    return chosen, length


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """[R, V] -> [R] the first highest-scoring token of each row, as `argmax` (both return the first
    maximal index); `max` is 2.3-2.4x faster than `argmax` on a CPU ([1,024, 512], one thread, three
    runs: 0.36-0.37 vs 0.86-0.91 ms)."""
    return logits.max(-1).indices


def _slots(plan, rows: torch.Tensor) -> torch.Tensor:
    """Rows [k] -> their positions in a layer's computed batch (itself without a plan)."""
    return rows if plan is None else plan.spread[rows.to(plan.spread.device)]


class HFEngine:
    """The fast engine behind `contract.Engine` (shared with `vllm.VllmEngine`): per instance [vanilla, *cells]."""

    def __init__(self, model, tokenizer, share: bool = True, own_kernel: str = DEFAULT_OWN_KERNEL,
                 speculate: bool | None = None):
        self.model, self.tokenizer, self.share = model, tokenizer, share
        self.speculate = speculate  # `run_grid`'s: None = on a GPU
        self.own_kernel = check_own_kernel(own_kernel)  # `cascade.own_part`
        self.store = OwnTokenStore()  # one grid at a time: the model's hooks are per call anyway
        self.last_plan: dict = {}  # the chunking of the last call (`run_grid`'s plan)
        self.num_layers = num_layers(model)
        self.context_length = getattr(model.config, "max_position_embeddings", None) or getattr(
            model.config, "n_positions", None)

    def run_grid(self, donors: list[str], recipients: list[str], cells: list[Cell], module: str,
                 max_new_tokens: int = 20, cells_per_chunk: int | None = None,
                 option_token_ids: list[list[list[int]]] | None = None, keep_logits: bool = False,
                 memory_budget_mb: float | None = None) -> list[list[CellResult]]:
        self.last_plan = {}
        options = GridOptions(cells_per_chunk=cells_per_chunk, keep_logits=keep_logits,
                              memory_budget_mb=memory_budget_mb, share=self.share, store=self.store,
                              plan=self.last_plan, own_kernel=self.own_kernel, speculate=self.speculate)
        return run_with(self.model, self.tokenizer, donors, recipients, cells, module, max_new_tokens=max_new_tokens,
                        option_token_ids=option_token_ids, options=options)

    def close(self) -> None:
        """Nothing to release: the model and its memory go with the engine."""

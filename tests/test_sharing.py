"""Row sharing (sharing.py): which rows each layer computes, and where their keys/values live.

The plans are checked against what each row must see, without a model: a simulated
slot store records who wrote each slot's keys/values at each step, and every live
row's slot must hold exactly its own past (a row's keys/values at layer l, step t,
are its own when its target layer is below l, else those of its instance's rows with
the same generated tokens). The engine tests (test_engine.py) hold the results to
the reference with sharing on; here it is also held to sharing off, on a model where
rows really share and split.
"""
import numpy as np
import pytest
import torch

from xtp_ray.cells import parse_cells
from xtp_ray.engine import hf
from xtp_ray.engine import sharing as sharing_module
from xtp_ray.engine.architectures import decoder_layers
from xtp_ray.engine.own_cache import OwnTokenStore
from xtp_ray.engine.sharing import RowSharing, share_rows
from xtp_ray.engine.tiny import build_tiny_model


def _kv_key(sharing, row, layer):
    """Who a row's keys/values at `layer` belong to, this step: itself, or its group's tokens."""
    return ("row", row) if sharing.targets[row] < layer else ("tokens", int(sharing.history[row]))


def _out_key(sharing, row, layer, first_step):
    own = sharing.targets[row] <= layer if first_step else sharing.targets[row] < layer
    return ("row", row) if own else ("tokens", int(sharing.history[row]))


@pytest.mark.parametrize("speculate", [False, True])
@pytest.mark.parametrize("repack", [0.0, sharing_module.REPACK, 2.0])  # re-pack at any free slot / default / never
@pytest.mark.parametrize("batch,seed", [(1, 0), (3, 1), (2, 2)])
def test_every_row_reads_its_own_past(batch, seed, repack, speculate, monkeypatch):
    """With speculate, a forward runs on the plans in place whenever they are steady and the tokens
    prove them consistent (as the engine's decode loop keeps a forward it ran ahead): every live row
    must still read exactly its own past."""
    monkeypatch.setattr(sharing_module, "REPACK", repack)
    rng = np.random.default_rng(seed)
    layers, n = 6, 14
    targets = np.repeat(np.r_[layers, rng.integers(0, layers, n - 1)], batch)  # vanilla + cells, cell-major
    sharing = RowSharing(targets, batch, "cpu", layers)
    rows = len(targets)
    store = [[[] for _ in range(rows)] for _ in range(layers)]  # [layer][slot] -> keys written per step
    past = [[[] for _ in range(rows)] for _ in range(layers)]  # [layer][row] -> what the row must read
    finished = np.zeros(rows, dtype=bool)
    saved, replanned, kept = [], [], []
    reuse = False
    for step in range(8):
        if reuse:
            sharing.reuse()
        else:
            sharing.plan(first_step=step == 0)
            replanned.append(sharing.replanned)
        for layer, plan in enumerate(sharing.plans):
            active, spread = plan.active.numpy(), plan.spread.numpy()
            assert len(active) % batch == 0 and (active % batch == np.arange(len(active)) % batch).all()
            every = np.arange(rows)  # a whole plan (the layer runs its rows as they are, no gather) is exactly that
            assert plan.whole == (len(active) == rows and (active == every).all() and (spread == every).all())
            if plan.copies is not None:  # all read before any is written, as the cache's indexed copy does
                to, source = (t.tolist() for t in plan.copies)
                pasts = [list(store[layer][slot]) for slot in source]
                for slot, content in zip(to, pasts):
                    store[layer][slot] = content
            leaders = sharing.slots[layer].leader
            assert reuse or not finished[leaders[leaders >= 0]].any()  # finished rows compute nothing (once planned)
            computing = [_out_key(sharing, row, layer, step == 0) for row in leaders[leaders >= 0]]
            assert len(set(computing)) == len(computing)  # and nothing is computed twice
            for slot, row in enumerate(active):  # each slot's computed row writes this step's keys/values
                store[layer][slot] = store[layer][slot][:step] + [_kv_key(sharing, row, layer)]
            for row in np.flatnonzero(~finished):
                past[layer][row].append(_kv_key(sharing, row, layer))
                assert store[layer][spread[row]] == past[layer][row], (step, layer, row)
                leader = active[spread[row]]
                assert _out_key(sharing, leader, layer, step == 0) == _out_key(sharing, row, layer, step == 0)
        saved.append(sharing.computed / ((step + 1) * layers * rows))
        if speculate:  # rows mostly follow their group (as on real models), sometimes part from it
            tokens = np.where(rng.random(rows) < 0.03, rng.integers(0, 3, rows), sharing.history % 3)
        else:
            tokens = rng.integers(0, 3, rows)  # few tokens: groups persist, and split
        steady = sharing.steady  # as the engine asks before it runs a forward ahead
        finished = finished | (rng.random(rows) < (0.02 if speculate else 0.05))
        reuse = speculate and steady and sharing.consistent(tokens, finished)
        kept.append(reuse)
        sharing.advance(tokens, finished)
    assert saved[-1] < 0.9  # the layers really ran fewer rows
    assert replanned[0] == layers and replanned[1] == layers  # step 0, and the first generated token
    assert not kept[0]  # step 0's plans (another sharing rule) never serve a generated token
    assert any(kept) == speculate  # with speculate, some forwards ran on kept plans


def test_a_split_replans_only_the_layers_where_the_rows_share():
    """Vanilla, a cell 0 -> 0 and a cell 0 -> 2 decode the same token, then the 0 -> 0 row parts: it shares
    only at layer 0 (at a generated token a row shares at layers <= its target), so layer 0 is planned
    afresh and layers 1 and 2 keep their plans; then nothing changes and nothing is planned."""
    sharing = RowSharing(np.array([3, 0, 2]), 1, "cpu", 3)
    live = np.zeros(3, dtype=bool)
    sharing.plan(first_step=True)
    sharing.advance(np.array([5, 5, 5]), live)
    sharing.plan(first_step=False)
    assert sharing.replanned == 3
    kept = [(plan.active, plan.spread) for plan in sharing.plans[1:]]
    sharing.advance(np.array([7, 8, 7]), live)
    sharing.plan(first_step=False)
    assert sharing.replanned == 1
    assert all(plan.active is active and plan.spread is spread and plan.copies is None  # the same plans
               for plan, (active, spread) in zip(sharing.plans[1:], kept))
    assert sharing.plans[0].copies is not None  # the parted row's new slot starts with the old slot's past
    assert sorted(sharing.plans[0].active.tolist()) == [0, 1]  # layer 0: vanilla's group and the parted row
    sharing.advance(np.array([9, 9, 9]), live)
    sharing.plan(first_step=False)
    assert sharing.replanned == 0 and sharing.plans[0].copies is None


def test_a_layer_where_every_row_computes_itself_runs_without_gathers():
    """Vanilla and a cell 0 -> 1: in step 0 layer 0 computes one row for both, layers 1 and 2 both rows,
    each in its own slot (a whole plan); once they chose different tokens every layer is whole, and the
    hooks hand the layers their rows as they are."""
    model = build_tiny_model("LlamaForCausalLM", 64, num_layers=3)
    sharing = RowSharing(np.array([3, 1]), 1, "cpu", 3)
    sharing.plan(first_step=True)
    assert [plan.whole for plan in sharing.plans] == [False, True, True]
    sharing.advance(np.array([5, 7]), np.zeros(2, dtype=bool))
    sharing.plan(first_step=False)
    assert all(plan.whole for plan in sharing.plans)
    assert sharing.plans[0].copies is not None  # layer 0's one slot split in two
    seen = []
    hooks = [layer.register_forward_pre_hook(lambda _m, args, kwargs: seen.append(args[0] if args else
                                                                                     kwargs["hidden_states"]),
                                             with_kwargs=True) for layer in decoder_layers(model)]
    try:
        with share_rows(model, sharing), torch.inference_mode():
            model(input_ids=torch.tensor([[5], [7]]), use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    assert [hidden.shape[0] for hidden in seen] == [2, 2, 2]


def test_sharing_equals_computing_every_row(tokenizer):
    """A model whose cells often decode vanilla's tokens and sometimes split: same tokens, logits within 1e-5
    (fp32; the layers run different batch sizes, so matrix products may sum in another order)."""
    model = build_tiny_model("LlamaForCausalLM", len(tokenizer), num_layers=6, hidden=64, initializer_range=0.1)
    donors = ["the cat sat on the mat", "a b c d e"]
    recipients = ["le chat est assis sur le tapis", "x y z"]
    cells = parse_cells("full", 6)
    counted = []
    original = RowSharing.plan

    def counting(self, first_step):
        original(self, first_step)
        counted.append((self.computed, sum(p.copies is not None for p in self.plans)))

    RowSharing.plan = counting
    try:
        shared = hf.run_grid(model, tokenizer, donors, recipients, cells, "ffn", 6, keep_logits=True)
    finally:
        RowSharing.plan = original
    plain = hf.run_grid(model, tokenizer, donors, recipients, cells, "ffn", 6, keep_logits=True, share=False)
    for a_row, b_row in zip(shared, plain):
        for a, b in zip(a_row, b_row):
            assert a.token_ids == b.token_ids
            assert torch.allclose(a.logits, b.logits, atol=1e-5, rtol=0)
    rows_per_forward = 2 * (len(cells) + 1) * 6
    assert counted[-1][0] < 0.8 * rows_per_forward * len(counted)  # shared
    assert sum(copies for _, copies in counted) > 0  # and groups split on the way
    assert len({tuple(r.token_ids) for r in shared[0]}) > 1


def test_hooks_are_removed_on_error(tokenizer):
    model = build_tiny_model("LlamaForCausalLM", len(tokenizer), num_layers=2)
    sharing = RowSharing(np.array([2, 0]), 1, "cpu", 2)
    with pytest.raises(RuntimeError, match="boom"):
        with share_rows(model, sharing):
            raise RuntimeError("boom")
    assert all(not layer._forward_pre_hooks and not layer._forward_hooks for layer in decoder_layers(model))


def test_store_hands_out_views_and_grows():
    store = OwnTokenStore()
    like = torch.zeros(1)
    keys, values = store.take(0, [(3, 4, 2, 8), (3, 4, 2, 6)], like)
    assert keys.shape == (3, 4, 2, 8) and values.shape == (3, 4, 2, 6) and keys.is_contiguous()
    smaller, _ = store.take(0, [(2, 4, 2, 8), (2, 4, 2, 6)], like)
    assert smaller.data_ptr() == keys.data_ptr()  # reused
    larger, _ = store.take(0, [(5, 4, 2, 8), (5, 4, 2, 6)], like)
    assert larger.numel() == 5 * 4 * 2 * 8 and larger.data_ptr() != keys.data_ptr()  # grown
    doubles, _ = store.take(0, [(2, 4, 2, 8), (2, 4, 2, 6)], like.double())
    assert doubles.dtype == torch.float64  # another dtype: new memory
    other, _ = store.take(1, [(2, 4, 2, 8), (2, 4, 2, 6)], like)
    assert other.data_ptr() != doubles.data_ptr()  # one pair per layer


def test_reused_store_changes_nothing(tokenizer):
    """Chunks of several sizes through one store, its memory poisoned with NaN before each
    grid: the results equal fresh caches' bit for bit (no row reads a slot it did not write)."""
    model = build_tiny_model("MistralForCausalLM", len(tokenizer), num_layers=4, hidden=64, initializer_range=0.1)
    donors, recipients = ["the cat sat on the mat", "a b c d e"], ["le chat est assis sur le tapis", "x y z"]
    store = OwnTokenStore()
    runs = [(parse_cells("full", 4), 5, None), (parse_cells("full", 4)[:5], 3, 2), (parse_cells("full", 4), 7, 4)]
    for cells, new_tokens, per_chunk in runs:
        with torch.inference_mode():  # the engine's tensors are inference tensors
            for pair in store._flat.values():
                for flat in pair:
                    flat.fill_(float("nan"))
        reused = hf.run_grid(model, tokenizer, donors, recipients, cells, "ffn", new_tokens, per_chunk,
                                 keep_logits=True, store=store)
        fresh = hf.run_grid(model, tokenizer, donors, recipients, cells, "ffn", new_tokens, per_chunk,
                                keep_logits=True)
        for a_row, b_row in zip(reused, fresh):
            for a, b in zip(a_row, b_row):
                assert a.token_ids == b.token_ids and torch.equal(a.logits, b.logits)
    assert store.nbytes() > 0

"""Shards cut for the pool by predicted cost, dispatched costliest first; and the schedule they give.

`cut_by_cost`: every (task, split, lang) is cut into runs of consecutive instances of about
`target` = total / (actors x WAVES) predicted seconds (but at least a batch of instances'
worth; at most `shard_size` instances; never splitting a group of instances that are scored
together), so every actor has several shards;
the shards dispatched last, one wave's worth, are cut again into parts of target / TAIL_PARTS,
so the last wave is short and no actor works alone at the end. Shards are ordered costliest
first: the order the pipeline dispatches them in.

`cut_by_size` is the plan before this one: `shard_size` instances per (task, split, lang),
dispatched in name order. Both name shards `<task>-<split>-<lang>-<k>`, k counting a
slice's shards in instance order, so a shard holds one language of one task.

`makespan` simulates the dispatch: each shard, in order, goes to the actor free first (Ray
Data's actor pool with one shard in flight per actor does that).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

WAVES = 4  # shards per actor, about: enough to even out costs, few enough to fill the batches
TAIL_PARTS = 4  # the last wave's shards are cut this much finer


@dataclass(frozen=True)
class Piece:
    key: tuple[str, str, str]  # (task, split, lang)
    start: int  # first instance (index in its slice)
    end: int  # past the last
    cost: float


def _units(instances) -> list[tuple[int, int]]:
    """(start, end) runs of instances that must stay in one shard: consecutive instances sharing a
    group (`extra["group"]`); an instance without one is a unit alone."""
    units, start = [], 0
    for k in range(1, len(instances) + 1):
        group = instances[start].extra.get("group") if instances else None
        if k == len(instances) or group is None or instances[k].extra.get("group") != group:
            units.append((start, k))
            start = k
    return units


def _pieces(key, instances, costs, target: float, shard_size: int, start: int = 0, end: int | None = None):
    """Consecutive runs of whole units from [start, end): each grows while it stays within `target`
    predicted seconds and `shard_size` instances (a unit alone may exceed either)."""
    end = len(instances) if end is None else end
    pieces, first, cost = [], None, 0.0
    for a, b in _units(instances[start:end]):
        a, b = a + start, b + start
        unit = sum(costs[a:b])
        if first is not None and (cost + unit > target or b - first > shard_size):
            pieces.append(Piece(key, first, a, cost))
            first, cost = None, 0.0
        if first is None:
            first = a
        cost += unit
    if first is not None:
        pieces.append(Piece(key, first, end, cost))
    return pieces


def _ordered(pieces: list[Piece]) -> list[Piece]:
    return sorted(pieces, key=lambda p: (-p.cost, p.key, p.start))


def _named(pieces: list[Piece], slices: dict) -> dict[str, list]:
    """Shard name -> instances, in the pieces' order; k numbers a slice's pieces by position."""
    index = {}
    for key in {p.key for p in pieces}:
        for k, piece in enumerate(sorted((p for p in pieces if p.key == key), key=lambda p: p.start)):
            index[(key, piece.start)] = k
    return {f"{'-'.join(p.key)}-{index[(p.key, p.start)]:05d}": slices[p.key][p.start:p.end] for p in pieces}


def cut_by_cost(slices: dict[tuple, list], costs: dict[tuple, list[float]], actors: int,
                shard_size: int, batch_size: int = 1) -> tuple[dict[str, list], dict[str, float]]:
    """(shard name -> instances, shard name -> predicted seconds), costliest first. Outside the last
    wave a shard holds about `batch_size` instances or more, so the engine's calls stay full."""
    total = sum(sum(c) for c in costs.values())
    count = sum(len(c) for c in costs.values())
    target = max(total / (max(1, actors) * WAVES), total / max(1, count) * batch_size) if total > 0 else float("inf")
    pieces = _ordered([p for key in sorted(slices) for p in _pieces(key, slices[key], costs[key], target,
                                                                         shard_size)])
    tail, tail_cost = [], 0.0
    for piece in reversed(pieces):  # the last wave: what the pool runs after everything else has started
        if tail_cost >= actors * target:
            break
        tail.append(piece)
        tail_cost += piece.cost
    finer = [part for piece in tail for part in _pieces(piece.key, slices[piece.key], costs[piece.key],
                                                        target / TAIL_PARTS, shard_size, piece.start, piece.end)]
    pieces = _ordered(pieces[:len(pieces) - len(tail)] + finer)
    shards = _named(pieces, slices)
    return shards, {name: piece.cost for name, piece in zip(shards, pieces)}


def cut_by_size(slices: dict[tuple, list], shard_size: int,
                costs: dict[tuple, list[float]] | None = None) -> tuple[dict[str, list], dict[str, float]]:
    """The plan by instance count: `shard_size` per (task, split, lang) (a group of instances scored
    together is never split: a shard ends before the group that would overflow it), in name order;
    with each shard's predicted seconds where `costs` are given."""
    costs = costs or {key: [0.0] * len(instances) for key, instances in slices.items()}
    pieces = [p for key in slices for p in _pieces(key, slices[key], costs[key], float("inf"), shard_size)]
    shards = _named(pieces, slices)
    shard_costs = dict(zip(shards, (p.cost for p in pieces)))
    names = sorted(shards)
    return {n: shards[n] for n in names}, {n: shard_costs[n] for n in names}


def makespan(costs: list[float], actors: int) -> float:
    """When the last shard ends, each shard in order going to the actor free first."""
    free = [0.0] * max(1, actors)
    for cost in costs:
        heapq.heappush(free, heapq.heappop(free) + cost)
    return max(free)


def lower_bound(instance_costs: list[float], actors: int) -> float:
    """No schedule ends sooner: the work spread evenly, or the costliest instance alone."""
    return max(sum(instance_costs) / max(1, actors), max(instance_costs, default=0.0))

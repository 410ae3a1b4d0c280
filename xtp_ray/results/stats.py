"""Means and spreads that do not depend on the order values arrive in (shards finish in any order)."""
from __future__ import annotations

import math


def mean(values) -> float:
    values = list(values)
    return math.fsum(values) / len(values) if values else float("nan")


def std(values) -> float:
    """Population standard deviation (as the published evaluation scripts compute it across languages)."""
    values = list(values)
    if not values:
        return float("nan")
    centre = mean(values)
    return math.sqrt(math.fsum((v - centre) ** 2 for v in values) / len(values))


def exact_terms(values) -> list[float]:
    """A few floats whose exact sum is the exact sum of `values` (fsum's correctly rounded sum, then the
    correctly rounded remainder, until nothing remains). Terms of disjoint parts, put together, give
    `math.fsum` of all the values, whatever the parts: what a shard keeps of a metric per cell."""
    values = [float(v) for v in values]
    terms: list[float] = []
    for _ in range(64):  # a handful in practice: each term takes ~53 more bits of the remainder
        rest = math.fsum(values + [-t for t in terms])
        if rest == 0.0:
            break
        terms.append(rest)
    return terms


def mean_of_terms(terms, count: int) -> float:
    """The mean `mean` gives over the values whose `exact_terms` (of any parts) are `terms`."""
    return math.fsum(terms) / count if count else float("nan")

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

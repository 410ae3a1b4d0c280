"""Statistics for comparing two runs scored on the same instances (no numpy, no scipy).

- `mcnemar_exact`: the exact McNemar test: of the n = b + c discordant instances (b right
  before and wrong now, c the reverse), under no change each is equally likely either way,
  so b ~ Binomial(n, 1/2); two-sided p = min(1, 2 P(X <= min(b, c))).
- `holm`: Holm's step-down adjustment of a family of p-values (controls the family-wise error).
- `wilson`: the Wilson score interval of a proportion.
- `encode` / `decode`: per-instance 0/1 outcomes as a compact string, in the order of sorted ids.
"""
from __future__ import annotations

import math


def mcnemar_exact(b: int, c: int) -> float:
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values, in the input's order."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted = [1.0] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def wilson(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """(low, high) of the 95% Wilson interval (z for another level); (nan, nan) for n = 0."""
    if n == 0:
        return float("nan"), float("nan")
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # at 0 and at n the bound is exactly 0 or 1 (rounding would leave a hair inside)
    return (0.0 if correct == 0 else max(0.0, centre - half)), (1.0 if correct == n else min(1.0, centre + half))


def encode(outcomes: dict[str, bool]) -> dict:
    """{"ids": sorted ids, "correct": "0110..."}: what a report keeps per (table, lang, metric)."""
    ids = sorted(outcomes)
    return {"ids": ids, "correct": "".join("1" if outcomes[i] else "0" for i in ids)}


def decode(encoded: dict) -> dict[str, bool]:
    return {i: flag == "1" for i, flag in zip(encoded["ids"], encoded["correct"])}


def compare_paired(previous: dict[str, bool], newest: dict[str, bool]) -> dict:
    """Both runs on the instances both scored: accuracies, discordant counts, exact p-value."""
    common = sorted(set(previous) & set(newest))
    b = sum(previous[i] and not newest[i] for i in common)  # lost
    c = sum(newest[i] and not previous[i] for i in common)  # gained
    n = len(common)
    return {"instances": n, "only_previous": len(set(previous) - set(newest)),
            "only_newest": len(set(newest) - set(previous)),
            "previous": sum(previous[i] for i in common) / n if n else float("nan"),
            "newest": sum(newest[i] for i in common) / n if n else float("nan"),
            "lost": b, "gained": c, "p_value": mcnemar_exact(b, c)}

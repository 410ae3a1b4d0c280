"""Parallel files that drift apart: pairs whose gold labels disagree are dropped and reported, never
scored (XNLI_unseen `de` is misaligned with `en` from about line 211 on)."""
from __future__ import annotations

import statistics

from .instance import InstanceError


def drop_misaligned(pairs: list[tuple[int, object, object, str, str]], donor_file: str, recipient_file: str,
                    errors: list[InstanceError]) -> list[int]:
    """Indices of parallel lines to keep, judged on gold labels and prompt lengths.

    pairs: (line, donor gold, recipient gold, donor prompt, recipient prompt). A
    same-instance pair has the same gold. A run of disagreements that never recovers
    (agreement from there on at most 60%, chance being 1/3 to 1/2) means the files
    are shifted: every pair from its first line on is dropped. Isolated
    disagreements drop their own line.
    """
    n = len(pairs)
    disagree = [k for k, p in enumerate(pairs) if p[1] != p[2]]
    shifted_from = None
    for k in disagree:
        agree = sum(1 for p in pairs[k:] if p[1] == p[2]) / (n - k)
        if agree <= 0.6 and n - k >= 5:
            shifted_from = k
            break
    ratios = [len(p[4]) / max(1, len(p[3])) for p in pairs]
    median = statistics.median(ratios) if ratios else 1.0
    keep = []
    for k, p in enumerate(pairs):
        if shifted_from is not None and k >= shifted_from:
            continue
        if p[1] != p[2]:
            errors.append(InstanceError(recipient_file, p[0], "gold",
                                        f"gold {p[2]!r} differs from the donor's {p[1]!r} in {donor_file}: "
                                        "not the same instance, pair dropped", reason="misaligned"))
            continue
        keep.append(k)
    if shifted_from is not None:
        tail = pairs[shifted_from:]
        odd_length = sum(1 for r in ratios[shifted_from:] if not 0.5 * median <= r <= 2 * median)
        errors.append(InstanceError(
            recipient_file, pairs[shifted_from][0], None,
            f"misaligned with {donor_file} from this line on: gold labels disagree on "
            f"{sum(1 for p in tail if p[1] != p[2])} of the {len(tail)} remaining lines "
            f"({odd_length} with an unusual length ratio); {len(tail)} pairs dropped", reason="misaligned",
            rows=len(tail)))
    return keep

"""The tokenizer side of scoring by option log-probs (the no-decoding mode): which first tokens name an
option right after the prompt. The scoring rules themselves are the metrics floor's (`metrics.py`); a task
scores an answer (`Task.score`)."""
from __future__ import annotations


def option_variants(label: str) -> list[str]:
    """Strings whose first token names an option right after the prompt."""
    return [label, f" {label}", f"({label}", f" ({label}"]


def option_token_ids(tokenizer, options: list[str]) -> list[list[int]]:
    """Per option, the first tokens of its variants that no other option shares.

    The no-decoding mode reads P(option) = sum of these tokens' next-token
    probabilities. A variant whose first token is shared ("(" or " (") says nothing
    about the option and is left out.
    """
    firsts = [{tokenizer(v, add_special_tokens=False).input_ids[0] for v in option_variants(o)} for o in options]
    out = []
    for k, ids in enumerate(firsts):
        shared = set().union(*(f for j, f in enumerate(firsts) if j != k))
        own = sorted(ids - shared)
        if not own:
            raise ValueError(f"option {options[k]!r} has no first token of its own for this tokenizer")
        out.append(own)
    return out

"""Scoring of answers (SPEC 3), reference-compatible: the rules the task modules (`tasks/`) use.

Generated text, as the release's evaluation scripts do it:
- XNLI, XCOPA: full-width brackets normalised first; correct when the text contains
  "(gold)" or is exactly the gold label (XNLI also accepts the gold label word in
  the target language), and wrong if it also names another of the options.
- GlobalOpinionQA: on the upper-cased raw text (no bracket normalisation); correct
  when it contains "(gold)" or is exactly the gold letter, and wrong if it also
  contains "(X)" or is exactly X for any other capital letter X in A-Z, whether or
  not X is one of the instance's options. XQuAD: gold contained in the prediction, case-insensitive, plus
SQuAD EM/F1. MGSM: the last number in the text equals the answer.
GlobalOpinionQA: argmax accuracy, plus 1 - Jensen-Shannon distance between the
model's option probabilities and the country's distribution.
Option log-probs (the no-decoding mode): the argmax option is the answer.
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tasks import Instance


def normalise_brackets(text: str) -> str:
    return text.replace("（", "(").replace("）", ")")


def names_option(text: str, label: str, word: str | None = None, upper: bool = False) -> bool:
    """Whether text names an option: "(label)", exactly "label", or its label word."""
    if upper:
        text = text.upper()
    return f"({label})" in text or text.strip() == label or bool(word and word in text)


def match_option(text: str, gold: str, options: list[str], label_words: dict[str, str] | None = None) -> bool:
    """Names the gold option and no other one (XNLI, XCOPA): brackets normalised first."""
    text = normalise_brackets(text)
    words = label_words or {}
    if not names_option(text, gold, words.get(gold)):
        return False
    return not any(names_option(text, other, words.get(other)) for other in options if other != gold)


CAPITALS = string.ascii_uppercase


def match_letter(text: str, gold: str) -> bool:
    """GlobalOpinionQA: names the gold letter and no other capital letter A-Z.

    The raw text is upper-cased, brackets are not normalised, and every other letter
    counts as a wrong answer, not only the instance's options.
    """
    if not names_option(text, gold, upper=True):
        return False
    return not any(names_option(text, other, upper=True) for other in CAPITALS if other != gold)


def _squad_normalise(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_em_f1(prediction: str, answers: list[str]) -> tuple[float, float]:
    """SQuAD v1.1 exact match and token F1, best over the gold answers."""
    pred = _squad_normalise(prediction)
    best_em = best_f1 = 0.0
    for answer in answers:
        gold = _squad_normalise(answer)
        best_em = max(best_em, float(pred == gold))
        common = Counter(pred.split()) & Counter(gold.split())
        same = sum(common.values())
        if same:
            precision, recall = same / len(pred.split()), same / len(gold.split())
            best_f1 = max(best_f1, 2 * precision * recall / (precision + recall))
    return best_em, best_f1


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", "").rstrip("."))
    except ValueError:
        return None


def js_similarity(p: list[float], q: list[float]) -> float:
    """1 - Jensen-Shannon distance (base 2, so in [0, 1])."""
    sp, sq = sum(p), sum(q)
    p = [x / sp for x in p]
    q = [x / sq for x in q]
    m = [(a + b) / 2 for a, b in zip(p, q)]

    def kl(a, b):
        return sum(x * math.log2(x / y) for x, y in zip(a, b) if x > 0)

    divergence = max(0.0, (kl(p, m) + kl(q, m)) / 2)
    return 1.0 - math.sqrt(divergence)


def option_probabilities(option_logprobs: list[float]) -> list[float]:
    """Softmax over the options' log-probs (renormalised to the options)."""
    top = max(option_logprobs)
    weights = [math.exp(lp - top) for lp in option_logprobs]
    total = sum(weights)
    return [w / total for w in weights]


def score(instance: Instance, text: str | None = None,
          option_logprobs: list[float] | None = None) -> dict:
    """{"correct": bool, "score": float, ...task metrics} for one answer, by the instance's task (its
    module in `tasks/` owns the rule). With text the answer is the generated text; otherwise the argmax
    of option_logprobs (option tasks only)."""
    from .tasks import get

    return get(instance.task).score(instance, text, option_logprobs)


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

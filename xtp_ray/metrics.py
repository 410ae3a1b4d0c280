"""The metrics floor: every scoring rule (SPEC 3), reference-compatible, and the metrics by name.

The rules, as the release's evaluation scripts apply them to generated text:
- `match_option` (XNLI, XCOPA): full-width brackets normalised first; correct when the text contains
  "(gold)" or is exactly the gold label (or contains the gold label word in the target language, where
  the instance has label words), and wrong if it also names another of the options.
- `match_letter` (GlobalOpinionQA): on the upper-cased raw text (no bracket normalisation); correct when
  it contains "(gold)" or is exactly the gold letter, and wrong if it also contains "(X)" or is exactly X
  for any other capital letter X in A-Z, whether or not X is one of the instance's options.
- `squad_em_f1` (XQuAD): SQuAD v1.1 exact match and F1, beside the gold contained in the text,
  case-insensitive.
- `mkqa_em_f1` (MKQA): MKQA's official exact match and F1 (apple/ml-mkqa `mkqa_eval.py`), beside a
  normalised gold contained in the answer's first line (`mkqa_normalize`).
- `last_number` (MGSM): the last number in the text equals the answer.
- `js_similarity` of `option_probabilities` (GlobalOpinionQA): 1 - Jensen-Shannon distance between the
  model's option probabilities and the country's distribution.
- `option_answer` (the no-decoding mode): the argmax of the option log-probs is the answer.

A `Metric` puts the rules together for one kind of answer: how generated text is scored, what the
option log-probs add beside the answer, which per-row metrics it writes beside `correct`, and whether it
needs generated text (an open answer). Metrics are registered by name (`register_metric`, `get_metric`,
as lm-eval's metrics are); a task names its metric (`Task.metric`, an own task's `metric:` in task.yaml)
and scores through it. This module imports nothing from the tasks (an instance is any object with the
fields of `Target`), nor torch.
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

# ------------------------------------------------------------------ options named in text


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


def match_first_word(text: str, gold: str) -> bool:
    """CulturalBench: the first word of the text, its punctuation stripped, is the gold (case-insensitive)."""
    words = text.strip().split()
    first = words[0].strip(".,:;!?()[]\"'").lower() if words else ""
    return first == gold.lower()


# ------------------------------------------------------------------ open answers


def contains_answer(text: str, answers: list[str]) -> bool:
    """XQuAD: a gold answer contained in the text, case-insensitive."""
    return any(a.lower() in text.lower() for a in answers)


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


MKQA_LANG = {"zh": "zh_cn"}  # our language name -> MKQA's
# One token per character in these (MKQA's "mixed segmentation"); whitespace tokens elsewhere.
CHARACTER_LANGS = ("zh_cn", "zh_hk", "zh_tw", "ja", "th", "km")
# The articles MKQA's evaluation removes, per language (its own patterns, as it applies them).
ARTICLES = {
    "en": r"\b(a|an|the)\b",
    "es": r"\b(un|una|unos|unas|el|la|los|las)\b",
    "vi": r"\b(của|là|cái|chiếc|những)\b",
    "de": r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b",
    "ar": r"\sال^|ال",
    "nl": r"\b(de|het|een|des|der|den)\b",
    "sv": r"\b(en|ett)\b",
    "da": r"\b(en|et)\b",
    "no": r"\b(en|et|ei)\b",
    "fr": r"\b(le|la|l'|les|du|de|d'|des|un|une|des)",
    "pt": r"\b(o|a|os|as|um|uma|uns|umas)\b",
    "it": r"\b(il|lo|la|l'|i|gli|le|del|dello|della|dell'|dei|degli|degl'|delle|un'|uno|una|un)",
    "fi": r"\b(se|yks|yksi)\b",
    "hu": r"\b(a|az|egy)\b",
}
PUNCTUATION = set(string.punctuation)


def mkqa_lang(lang: str) -> str:
    """MKQA's code of one of our language names (`zh` is `zh_cn`); others as they are."""
    return MKQA_LANG.get(lang, lang)


def mkqa_tokens(text: str, lang: str) -> list[str]:
    """MKQA's normalisation as tokens: lower case, ASCII punctuation out, the language's articles out,
    then whitespace tokens, or one token per character in CHARACTER_LANGS. lang: MKQA's code."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    if lang in ARTICLES:
        text = re.sub(ARTICLES[lang], " ", text)
    parts = list(text) if lang in CHARACTER_LANGS else text.split()
    return [t for t in parts if t.strip()]


def mkqa_normalize(text: str, lang: str) -> str:
    return " ".join(mkqa_tokens(text, lang))


def _mkqa_f1(prediction: str, gold: str, lang: str) -> float:
    gold_tokens = mkqa_tokens(gold, lang) if gold else []
    predicted = mkqa_tokens(prediction, lang) if prediction else []
    if not gold_tokens or not predicted:  # No Answer on either side: right only if both are
        return float(gold_tokens == predicted)
    common = sum((Counter(gold_tokens) & Counter(predicted)).values())
    if common == 0:
        return 0.0
    recall, precision = common / len(gold_tokens), common / len(predicted)
    return 2 * precision * recall / (precision + recall)


def mkqa_em_f1(prediction: str, golds: list[str], lang: str) -> tuple[float, float]:
    """MKQA's official exact match and F1 of one prediction: the best over the gold strings. lang: ours
    or MKQA's code (`zh` and `zh_cn` alike)."""
    if not golds:
        raise ValueError("MKQA scores a prediction against at least one gold answer")
    lang = mkqa_lang(lang)
    em = max(float(mkqa_normalize(prediction, lang) == mkqa_normalize(gold, lang)) for gold in golds)
    return em, max(_mkqa_f1(prediction, gold, lang) for gold in golds)


def mkqa_contains(text: str, golds: list[str], lang: str) -> bool:
    """MKQA: a normalised gold contained in the normalised first line of the text. lang: ours or MKQA's."""
    lang = mkqa_lang(lang)
    first_line = mkqa_normalize(text.strip().split("\n", 1)[0] if text.strip() else "", lang)
    return any(g and g in first_line for g in (mkqa_normalize(gold, lang) for gold in golds))


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", "").rstrip("."))
    except ValueError:
        return None


def equals_number(text: str, gold: str) -> bool:
    """MGSM: the last number in the text equals the gold number (commas as thousands separators)."""
    predicted = last_number(text)
    return predicted is not None and abs(predicted - float(gold.replace(",", ""))) < 1e-6


# ------------------------------------------------------------------ option log-probs


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


def option_answer(options: list[str], option_logprobs: list[float]) -> str:
    """The no-decoding answer: the option of the highest log-prob (the first of equal ones)."""
    return options[max(range(len(options)), key=option_logprobs.__getitem__)]


# ------------------------------------------------------------------ metrics by name


class Target(Protocol):
    """What a metric reads of an instance (`tasks.Instance` is one)."""
    lang: str
    gold: str
    options: list[str]
    label_words: dict[str, str]
    extra: dict


def answers_of(target: Target) -> list[str]:
    """The gold answers of an open-answer instance: `extra["answers"]`, else its gold."""
    return target.extra.get("answers") or [target.gold]


@dataclass(frozen=True)
class Metric:
    """One way to score an answer: `text(target, text)` -> {"correct", ...}, and `options(target,
    option_logprobs)` -> the metrics of the option log-probs beside the answer (None: none)."""
    name: str
    text: Callable[[Target, str], dict]
    options: Callable[[Target, list[float]], dict] | None = None
    names: tuple[str, ...] = ()  # per-row metrics beside `correct` (in the tables, report and results.json)
    open_answer: bool = False  # no options: scored from generated text only

    def score(self, target: Target, text: str | None = None, option_logprobs: list[float] | None = None) -> dict:
        """{"correct": bool, ...metrics, "score": float} for one answer: the generated text, or without
        text the argmax of the option log-probs (the caller checks that the target has options)."""
        if text is None:
            prediction = option_answer(target.options, option_logprobs)
            result = {"correct": prediction == target.gold, "prediction": prediction}
        else:
            result = self.text(target, text)
        result.update(self.options(target, option_logprobs) if option_logprobs is not None and self.options else {})
        result["score"] = float(result["correct"])
        return result


METRICS: dict[str, Metric] = {}


def register_metric(name: str, *, names: tuple[str, ...] = (), open_answer: bool = False,
                    options: Callable[[Target, list[float]], dict] | None = None):
    """Decorator: register `text(target, text) -> dict` as the metric `name`."""
    def register(text: Callable[[Target, str], dict]) -> Callable[[Target, str], dict]:
        if not name or name in METRICS:
            raise ValueError(f"metric name {name!r} is empty or registered twice")
        METRICS[name] = Metric(name, text, options, names, open_answer)
        return text
    return register


def get_metric(name: str) -> Metric:
    """The metric called `name`, or ValueError listing the known ones."""
    try:
        return METRICS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown metric {name!r}; metrics: {', '.join(METRICS)}") from None


def metric_names() -> tuple[str, ...]:
    return tuple(METRICS)


def _distribution_similarity(target: Target, option_logprobs: list[float]) -> dict:
    return {"js_similarity": js_similarity(option_probabilities(option_logprobs), target.extra["distribution"])}


@register_metric("choice")
def _choice(target: Target, text: str) -> dict:
    """XNLI, XCOPA: `match_option`, with the instance's label words where it has them."""
    return {"correct": match_option(text, target.gold, target.options, target.label_words)}


@register_metric("letter")
def _letter(target: Target, text: str) -> dict:
    """A lettered option: `match_letter`."""
    return {"correct": match_letter(text, target.gold)}


# GlobalOpinionQA: the letter as `letter` scores it; from the option log-probs also the JS similarity of the
# option probabilities to the instance's `extra["distribution"]`
register_metric("distribution", names=("js_similarity",), options=_distribution_similarity)(_letter)


@register_metric("true_false")
def _true_false(target: Target, text: str) -> dict:
    """CulturalBench: `match_first_word`."""
    return {"correct": match_first_word(text, target.gold)}


@register_metric("contains", names=("em", "f1"), open_answer=True)
def _contains(target: Target, text: str) -> dict:
    """XQuAD: `contains_answer`, plus SQuAD EM/F1."""
    answers = answers_of(target)
    em, f1 = squad_em_f1(text, answers)
    return {"correct": contains_answer(text, answers), "em": em, "f1": f1}


@register_metric("mkqa", names=("em", "f1"), open_answer=True)
def _mkqa(target: Target, text: str) -> dict:
    """MKQA: `mkqa_contains` in the first line, plus MKQA's EM/F1."""
    golds = answers_of(target)
    contained = mkqa_contains(text, golds, target.lang)
    em, f1 = mkqa_em_f1(text, golds, target.lang)
    return {"correct": contained, "em": em, "f1": f1}


@register_metric("number", open_answer=True)
def _number(target: Target, text: str) -> dict:
    """MGSM: `equals_number`."""
    return {"correct": equals_number(text, target.gold)}

"""XNLI (CC BY-NC 4.0): premise/hypothesis entailment, three options, En -> non-En.

Splits: the release's `sample`/`unseen` (prompt-ready, with label words per language) and the
original `dev` (`xnli/dev/dev-<lang>.tsv`: premise, hypothesis, label). Scoring: the option
named in the text, brackets normalised, label words accepted (the metric `choice`, `metrics.match_option`).
"""
from __future__ import annotations

from .. import storage
from . import readers
from .base import Task
from .instance import RowError
from .registry import register
from .release_options import load_option_release

LABELS = {"entailment": "1", "neutral": "2", "contradiction": "3"}
WORDS_EN = {"1": "Entail", "2": "Neutral", "3": "Contradict"}
OPTIONS = ["1", "2", "3"]
TEMPLATE = ("Human: What do you think is the relationship between the premise and the hypothesis?\n\n"
            "Premise: {premise}\nHypothesis: {hypothesis}\n\n(1) Entail \n(2) Neutral\n(3) Contradict\n\n"
            "Assistant: If I had to select one of the options, my answer would be:")


class XNLI(Task):
    name = "xnli"
    source = "facebook/xnli"
    files = "xnli/{split}/{split}-<lang>.tsv"
    family = "understanding"
    metric = "choice"
    release_dir = "XNLI"
    original_splits = ("dev",)
    template = TEMPLATE
    offline_scaling = "ID"  # its data in the paper's offline scaling table (release Asset/settings.png)

    def load_release(self, root, split, lang, errors):
        return load_option_release(self, root, split, lang, OPTIONS, errors, with_label_words=True)

    def original_languages(self, split, root):
        return readers.languages_in(storage.join(root, "xnli", "dev"), "dev-", ".tsv")

    def read_records(self, root, split, lang, errors):
        return readers.tsv_records(storage.join(root, "xnli", "dev", f"dev-{lang}.tsv"),
                                   ("premise", "hypothesis", "label"), errors)

    def build(self, record, lang):
        label = readers.need_str(record.get("label"), "label")
        if label not in LABELS:
            raise RowError("label", f"{label!r} is not one of {sorted(LABELS)}")
        return (TEMPLATE.format(premise=readers.need_str(record.get("premise"), "premise"),
                                hypothesis=readers.need_str(record.get("hypothesis"), "hypothesis")),
                LABELS[label], list(OPTIONS), {})

    def label_words(self, lang):
        return WORDS_EN if lang == "en" else {}


TASK = register(XNLI())

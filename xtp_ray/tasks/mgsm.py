"""MGSM (CC BY 4.0; beyond the paper): grade-school maths, question -> final number, En -> non-En.

Split: the original `test` (`mgsm/mgsm_<lang>.tsv`: question, answer). Scoring: the last number in
the text equals the answer (the metric `number`).
"""
from __future__ import annotations

from .. import storage
from . import readers
from .base import Task
from .instance import RowError
from .registry import register

TEMPLATE = "Question: {question}\nAnswer:"


class MGSM(Task):
    name = "mgsm"
    source = "juletxara/mgsm"
    files = "mgsm/mgsm_<lang>.tsv"
    family = "generation"
    metric = "number"
    original_splits = ("test",)
    template = TEMPLATE

    def original_languages(self, split, root):
        return readers.languages_in(storage.join(root, "mgsm"), "mgsm_", ".tsv")

    def read_records(self, root, split, lang, errors):
        return readers.tsv_records(storage.join(root, "mgsm", f"mgsm_{lang}.tsv"), ("question", "answer"), errors)

    def build(self, record, lang):
        answer = readers.need_str(record.get("answer"), "answer").strip()
        try:
            float(answer.replace(",", ""))
        except ValueError:
            raise RowError("answer", f"{answer!r} is not a number") from None
        return TEMPLATE.format(question=readers.need_str(record.get("question"), "question")), answer, [], {}


TASK = register(MGSM())

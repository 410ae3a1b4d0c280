"""XCOPA (CC BY 4.0; English COPA): which of two options is the cause or result, En -> non-En.

Splits: the release's `sample`/`unseen` and the original `test`/`val`
(`xcopa/data/<lang>/<split>.<lang>.jsonl`, English `xcopa/copa_en_from_COPA-SSE/<split>.en.jsonl`).
Scoring as XNLI's (the metric `choice`), without label words (the release no longer scores XCOPA).
"""
from __future__ import annotations

from .. import storage
from . import readers
from .base import Task
from .instance import RowError
from .registry import register
from .release_options import load_option_release

OPTIONS = ["1", "2"]
TEMPLATE = ("You are assigned to complete a two-category classification task.\n\nPremise: {premise}\n"
            "Options: (1) {choice1}\n(2) {choice2}\n\nPlease determine which of the two options is more "
            "likely to be the {relation} of the given premise.\n\nYour Answer:")


class XCOPA(Task):
    name = "xcopa"
    source = "cambridgeltl/xcopa"
    files = "xcopa/data/<lang>/{split}.<lang>.jsonl, English: xcopa/copa_en_from_COPA-SSE/{split}.en.jsonl"
    family = "understanding"
    metric = "choice"
    release_dir = "XCOPA"
    original_splits = ("test", "val")
    template = TEMPLATE
    offline_scaling = "OOD"  # its data in the paper's offline scaling table (release Asset/settings.png)

    def load_release(self, root, split, lang, errors):
        return load_option_release(self, root, split, lang, OPTIONS, errors)

    def original_languages(self, split, root):
        english = storage.exists(storage.join(root, "xcopa", "copa_en_from_COPA-SSE", f"{split}.en.jsonl"))
        return sorted(storage.list_names(storage.join(root, "xcopa", "data")) + (["en"] if english else []))

    def read_records(self, root, split, lang, errors):
        uri = (storage.join(root, "xcopa", "copa_en_from_COPA-SSE", f"{split}.en.jsonl") if lang == "en"
               else storage.join(root, "xcopa", "data", lang, f"{split}.{lang}.jsonl"))
        return uri, readers.json_lines(uri, errors)

    def build(self, record, lang):
        relation = {"cause": "cause", "effect": "result"}.get(record.get("question"))
        if relation is None:
            raise RowError("question", "expected 'cause' or 'effect'")
        if record.get("label") not in (0, 1):
            raise RowError("label", f"{record.get('label')!r} is not 0 or 1")
        prompt = TEMPLATE.format(premise=readers.need_str(record.get("premise"), "premise"),
                                 choice1=readers.need_str(record.get("choice1"), "choice1"),
                                 choice2=readers.need_str(record.get("choice2"), "choice2"), relation=relation)
        return prompt, str(record["label"] + 1), list(OPTIONS), {"idx": record.get("idx")}


TASK = register(XCOPA())

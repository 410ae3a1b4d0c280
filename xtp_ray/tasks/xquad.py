"""XQuAD (CC BY-SA 4.0): extractive questions on a context, open answers, En -> non-En.

Splits: the release's `sample`/`unseen` (`split/xquad.<lang>.json`, `ans/xquad.<lang>.json`) and the
original `test` (`xquad/xquad.<lang>.json`, SQuAD layout; pairs by question id). Scoring: a gold
answer contained in the text, case-insensitive, plus SQuAD exact match and F1 (the metric `contains`).
"""
from __future__ import annotations

import json

from .. import storage
from . import readers
from .base import Task
from .instance import Instance, InstanceError, RowError
from .registry import register

TEMPLATE = ("Human: Please answer these questions only based on the given context.\n\n"
            "Context: {context}\nQuestion: {question}\n\nAssistant: My answer would be:")


class XQuAD(Task):
    name = "xquad"
    source = "google/xquad"
    files = "xquad/xquad.<lang>.json"
    family = "generation"
    metric = "contains"
    release_dir = "XQuAD"
    original_splits = ("test",)
    template = TEMPLATE
    offline_scaling = "ID"  # its data in the paper's offline scaling table (release Asset/settings.png)
    align_by_gold = False  # pairs by question id; answers differ by language

    def languages(self, split, root):
        if split in ("sample", "unseen"):
            return readers.languages_in(storage.join(self.release_base(root, split), "split"), "xquad.")
        return super().languages(split, root)

    def load_release(self, root, split, lang, errors):
        base = self.release_base(root, split)
        donor_file = storage.join(base, "split", "xquad.en.json")
        recipient_file = storage.join(base, "split", f"xquad.{lang}.json")
        files = {"recipient": recipient_file, "donor": donor_file,
                 "gold": storage.join(base, "ans", f"xquad.{lang}.json")}
        by_line = readers.parallel(files, "recipient", errors)
        if by_line is None:
            return []
        donors, golds = by_line["donor"], by_line["gold"]
        out = []
        for line, recipient in sorted(by_line["recipient"].items()):
            try:
                recipient = readers.need_str(recipient, "prompt")
                donor = readers.need_str(donors.get(line), "prompt (donor)")
                gold = readers.need_str(golds.get(line), "gold")
            except RowError as exc:
                errors.append(InstanceError(recipient_file, line, exc.field, str(exc)))
                continue
            out.append(Instance(f"xquad/{split}/{lang}/{line - 1}", "xquad", split, lang, f"en->{lang}", donor,
                                recipient, gold, [], {}, {"template": "release", "answers": [gold]}))
        return out

    def original_languages(self, split, root):
        return readers.languages_in(storage.join(root, "xquad"), "xquad.", ".json")

    def read_records(self, root, split, lang, errors):
        uri = storage.join(root, "xquad", f"xquad.{lang}.json")
        text = readers.read_file_text(uri, errors)
        if text is None:
            return uri, None
        try:
            document = json.loads(text)
            records = []  # (the qa's ordinal in the file, its record); a bad qa is its own row's error
            for article in document["data"]:
                for paragraph in article["paragraphs"]:
                    for qa in paragraph["qas"]:
                        records.append((len(records) + 1, squad_record(paragraph, qa)))
            return uri, records
        except json.JSONDecodeError as exc:
            reason = f"bad JSON ({exc.msg}, line {exc.lineno})"
        except KeyError as exc:
            reason = f"no field {exc.args[0]!r} where the SQuAD layout (data/paragraphs/qas/answers) has one"
        except TypeError:
            reason = "not in the SQuAD layout (data/paragraphs/qas/answers)"
        return self.malformed(uri, reason, errors)

    def build(self, record, lang):
        if "malformed" in record:
            raise RowError(record["malformed"][0], record["malformed"][1])
        answers = record.get("answers")
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise RowError("answers", "expected a non-empty list of strings")
        prompt = TEMPLATE.format(context=readers.need_str(record.get("context"), "context"),
                                 question=readers.need_str(record.get("question"), "question"))
        return prompt, answers[0], [], {"answers": answers, "qa_id": record.get("id")}

    def pair_key(self, line, extra):
        return extra.get("qa_id")


def squad_record(paragraph, qa) -> dict:
    """One qa of the SQuAD layout as a record; a qa that is not in the layout becomes a record naming its
    field (`build` refuses it), so one bad qa leaves out its row only."""
    if not isinstance(qa, dict):
        return {"malformed": (None, f"a qa is a JSON object in the SQuAD layout, got {qa!r:.60}")}
    answers = qa.get("answers")
    if not isinstance(answers, list) or not all(isinstance(a, dict) and isinstance(a.get("text"), str)
                                                for a in answers):
        return {"id": qa.get("id"), "malformed": ("answers", "expected a list of objects with a 'text' string")}
    context = paragraph.get("context") if isinstance(paragraph, dict) else None
    return {"id": qa.get("id"), "context": context, "question": qa.get("question"),
            "answers": [a["text"] for a in answers]}


TASK = register(XQuAD())

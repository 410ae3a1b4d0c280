"""GlobalOpinionQA: how someone from a country would answer a survey question, non-En -> En.

Splits: the release's `sample`/`unseen` (`split/<lang>.json` English records {input_text, label:
[probs], country}, `translated/<lang>.json` the same prompts in the country's language: the donor)
and the original `eval` (`globalopinionqa/eval.json`, English only). Scoring: the gold letter named
on the upper-cased text and no other capital letter (`metrics.match_letter`); from option log-probs
also 1 - Jensen-Shannon distance to the country's distribution (the metric `distribution`).
"""
from __future__ import annotations

import json

from .. import storage
from . import readers
from .base import Task
from .instance import Instance, InstanceError, RowError
from .registry import register

TEMPLATE = ("Human: How would someone from {country} answer the following question:\n{question}\n"
            "Here are the options:\n{options}\nAssistant: If I had to select one of the options, "
            "my answer would be:")


class GlobalOpinionQA(Task):
    name = "globalopinionqa"
    source = "Anthropic/llm_global_opinions"
    files = "globalopinionqa/{split}.json"
    family = "culture"
    metric = "distribution"
    donor_is_english = False
    release_dir = "GlobalOpinionQA"
    original_splits = ("eval",)
    template = TEMPLATE
    offline_scaling = "ID"  # its data in the paper's offline scaling table (release Asset/settings.png)

    def load_release(self, root, split, lang, errors):
        base = self.release_base(root, split)
        record_file = storage.join(base, "split", f"{lang}.json")
        translated_file = storage.join(base, "translated", f"{lang}.json")
        lines: dict[str, int] = {}
        by_line = readers.parallel({"records": record_file, "translated": translated_file}, "records", errors,
                                   lines)
        if by_line is None:
            return []
        records, translated = by_line["records"], by_line["translated"]
        if lines.get(translated_file, lines[record_file]) != lines[record_file]:
            # Machine translation mangles option lists at times (e.g. "(سعيد"), so option
            # counts are no evidence; the files' line counts are: a shifted file pairs nothing.
            # (A bad JSON line keeps its place: it is its own row's error, and the rest pairs.)
            errors.append(InstanceError(record_file, None, None, f"left out whole: {translated_file} has "
                                        f"{lines[translated_file]} prompts for its {lines[record_file]} records, so "
                                        "they cannot be paired line by line", reason="misaligned",
                                        rows=len(records)))
            return []
        out = []
        for line, record in sorted(records.items()):
            if line not in translated:  # its translated line is bad JSON, reported as that file's row already
                continue
            try:
                if not isinstance(record, dict):
                    raise RowError(None, "expected a JSON object")
                recipient = readers.need_str(record.get("input_text"), "input_text")
                donor = readers.need_str(translated.get(line), "prompt (translated)")
                country = readers.need_str(record.get("country"), "country")
                distribution = readers.distribution(record.get("label"), "label")
                letters = readers.letters(len(distribution))
                named = sum(1 for letter in letters if f"({letter})" in recipient)
                if named != len(letters):
                    raise RowError("label", f"{len(letters)} probabilities but the prompt lists {named} options")
            except RowError as exc:
                errors.append(InstanceError(record_file, line, exc.field, str(exc)))
                continue
            gold = letters[max(range(len(distribution)), key=distribution.__getitem__)]
            out.append(Instance(f"globalopinionqa/{split}/{lang}/{line - 1}", "globalopinionqa", split, lang,
                                f"{lang}->en", donor, recipient, gold, letters, {},
                                {"template": "release", "country": country, "distribution": distribution}))
        return out

    def original_languages(self, split, root):
        return ["en"] if storage.exists(storage.join(root, "globalopinionqa", "eval.json")) else []

    def check_original_language(self, lang):
        if lang != "en":
            raise ValueError("GlobalOpinionQA's original records are English only (lang 'en'); the translated "
                             "donors of the non-En -> En direction come with the release splits (sample/unseen)")

    def read_records(self, root, split, lang, errors):
        uri = storage.join(root, "globalopinionqa", "eval.json")
        text = readers.read_file_text(uri, errors)
        if text is None:
            return uri, None
        try:
            document = json.loads(text)
            if not isinstance(document, list):
                raise TypeError("expected a JSON list of records")
            return uri, list(enumerate(document, 1))
        except json.JSONDecodeError as exc:
            reason = f"bad JSON ({exc.msg}, line {exc.lineno})"
        except TypeError as exc:
            reason = str(exc)
        return self.malformed(uri, reason, errors)

    def build(self, record, lang):
        options = record.get("options")
        # Scale questions mix words and numbers: ["Not important at all", 1.0, 2.0, ...]
        if (not isinstance(options, list) or len(options) < 2
                or not all(isinstance(o, (str, int, float)) and not isinstance(o, bool) for o in options)):
            raise RowError("options", "expected a list of at least two option texts")
        options = [str(o) for o in options]
        distribution = readers.distribution(record.get("distribution"), "distribution")
        if len(distribution) != len(options):
            raise RowError("distribution", f"{len(distribution)} probabilities for {len(options)} options")
        letters = readers.letters(len(options))
        listed = "\n".join(f"({letter}) {option}" for letter, option in zip(letters, options))
        prompt = TEMPLATE.format(country=readers.need_str(record.get("country"), "country"),
                                 question=readers.need_str(record.get("question"), "question"), options=listed)
        gold = letters[max(range(len(distribution)), key=distribution.__getitem__)]
        return prompt, gold, letters, {"country": record["country"], "distribution": distribution}


TASK = register(GlobalOpinionQA())

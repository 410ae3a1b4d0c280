"""CulturalBench-Hard: is this answer to a question about a country true or false; the paper's OOD set
for culture; non-En -> En (the donor is the prompt in `lang`, the English recipient is scored), FFN.

Source, split `test`: the dataset's rows (data_idx, question_idx, prompt_question, prompt_option,
answer True/False, country), four per question, one per option: `<root>/culturalbench/
CulturalBench-Hard.csv`, `.json` (a list of rows) or `.jsonl`; or `hf:PATH`, a save of
`kellycyy/CulturalBench` (config CulturalBench-Hard; its split `test`).
Translations (the release's are unpublished; you supply them): `<root>/culturalbench/translated/
<lang>.jsonl`, one line per row, {"data_idx": ..., "prompt": the whole prompt below in <lang>}. For
`en` none is needed: donor and recipient are the same.

Prompt: `Question: {prompt_question}\\nAnswer: {prompt_option}\\nIs this answer true or false for this
question? You must choose either True or False.` Options True and False, scored from their log-probs
or from the first generated word (the metric `true_false`).

Groups: the benchmark counts a question right only when all four of its rows are right, so each
instance carries its question (`extra["group"]`) and everything downstream counts questions
(`results/partials.py`); shards never split one. A question without its four rows, in the data or
in a translation, is left out whole, with one line.
"""
from __future__ import annotations

import csv
import io
import json

from .. import storage
from . import readers
from .base import Task
from .instance import Instance, InstanceError, RowError
from .registry import register

TEMPLATE = ("Question: {prompt_question}\nAnswer: {prompt_option}\nIs this answer true or false for this "
            "question? You must choose either True or False.")
OPTIONS = ["True", "False"]
ROWS_PER_QUESTION = 4
FILES = ("CulturalBench-Hard.csv", "CulturalBench-Hard.json", "CulturalBench-Hard.jsonl")
FIELDS = ("data_idx", "question_idx", "prompt_question", "prompt_option", "answer", "country")


def _answer(value) -> str:
    text = str(value).strip().lower() if isinstance(value, (str, bool)) else ""
    if text not in ("true", "false"):
        raise RowError("answer", f"{value!r} is not True or False")
    return "True" if text == "true" else "False"


def _index(value, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip():
        raise RowError(name, "expected an index")
    text = str(value).strip()
    return str(int(float(text))) if text.replace(".", "", 1).isdigit() else text  # CSV reads "12" or "12.0"


class CulturalBench(Task):
    name = "culturalbench"
    source = "kellycyy/CulturalBench"
    files = "culturalbench/CulturalBench-Hard.csv (.json, .jsonl), translations: culturalbench/translated/<lang>.jsonl"
    family = "culture"
    metric = "true_false"
    donor_is_english = False
    original_splits = ("test",)
    template = TEMPLATE
    offline_scaling = "OOD"  # its data in the paper's offline scaling table (release Asset/settings.png)

    def _source(self, root: str, split: str, errors) -> tuple[str, list[tuple[int, object]] | None]:
        if root.startswith("hf:"):
            rows = readers.hf_split(root[3:], split, need_lang=False)
            return f"{root}[{split}]", list(enumerate(rows, 1))
        directory = storage.join(root, "culturalbench")
        names = storage.list_names(directory)
        found = [n for n in FILES if n in names]
        if not found:
            raise FileNotFoundError(f"{directory}: none of {', '.join(FILES)}")
        uri = storage.join(directory, found[0])
        text = readers.read_file_text(uri, errors)
        if text is None:
            return uri, None
        if uri.endswith(".csv"):
            reader = csv.DictReader(io.StringIO(text))
            return uri, [(k, row) for k, row in enumerate(reader, 2)]  # line 1 is the header
        if uri.endswith(".jsonl"):
            return uri, readers.parse_json_lines(uri, text, errors)
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            errors.append(InstanceError(uri, None, None, f"bad JSON ({exc.msg}, line {exc.lineno}); its instances "
                                                         "are left out"))
            return uri, None
        if not isinstance(document, list):
            errors.append(InstanceError(uri, None, None, "expected a JSON list of rows; its instances are left out"))
            return uri, None
        return uri, list(enumerate(document, 1))

    def languages(self, split, root):
        try:
            self._source(root, split, [])
        except FileNotFoundError:
            return []
        if root.startswith("hf:"):
            return ["en"]
        translated = readers.languages_in(storage.join(root, "culturalbench", "translated"), "", ".jsonl")
        return sorted({"en", *translated})

    def _rows(self, source: str, records, errors) -> list[dict]:
        """The rows of whole questions (four each, in data_idx order); others reported and left out."""
        rows, questions = [], {}
        for line, record in records:
            try:
                if not isinstance(record, dict):
                    raise RowError(None, "expected a row with the fields " + ", ".join(FIELDS))
                row = {"line": line, "data_idx": _index(record.get("data_idx"), "data_idx"),
                       "question_idx": _index(record.get("question_idx"), "question_idx"),
                       "prompt_question": readers.need_str(record.get("prompt_question"), "prompt_question"),
                       "prompt_option": readers.need_str(record.get("prompt_option"), "prompt_option"),
                       "answer": _answer(record.get("answer")),
                       "country": readers.need_str(record.get("country"), "country")}
            except RowError as exc:
                errors.append(InstanceError(source, line, exc.field, str(exc)))
                continue
            rows.append(row)
            questions.setdefault(row["question_idx"], []).append(row)
        whole = set()
        for question, members in questions.items():
            if len(members) != ROWS_PER_QUESTION:
                errors.append(InstanceError(source, members[0]["line"], "question_idx",
                                            f"question {question} has {len(members)} row(s), not "
                                            f"{ROWS_PER_QUESTION}: left out whole (it is scored as a whole)",
                                            reason="group_skipped", rows=len(members)))
            else:
                whole.add(question)
        return [r for r in rows if r["question_idx"] in whole]

    def _translations(self, root: str, lang: str, errors) -> tuple[str, dict[str, str] | None]:
        uri = storage.join(root, "culturalbench", "translated", f"{lang}.jsonl")
        lines = readers.json_lines(uri, errors)
        if lines is None:
            return uri, None
        prompts = {}
        for line, record in lines:
            try:
                if not isinstance(record, dict):
                    raise RowError(None, "expected {\"data_idx\", \"prompt\"}")
                prompts[_index(record.get("data_idx"), "data_idx")] = readers.need_str(record.get("prompt"), "prompt")
            except RowError as exc:
                errors.append(InstanceError(uri, line, exc.field, str(exc)))
        return uri, prompts

    def load_original(self, root, split, lang, errors):
        source, records = self._source(root, split, errors)
        if records is None:
            return []
        rows = self._rows(source, records, errors)
        donors = None
        if lang != "en":
            translated, donors = self._translations(root, lang, errors)
            if donors is None:
                return []
            missing = {}
            for row in rows:
                if row["data_idx"] not in donors:
                    missing.setdefault(row["question_idx"], []).append(row["data_idx"])
            for question, data_idx in missing.items():
                errors.append(InstanceError(translated, None, "data_idx", f"no translation of row(s) "
                                            f"{', '.join(data_idx)} of question {question}: the question is left out "
                                            f"in {lang}", reason="group_skipped",
                                            rows=sum(1 for r in rows if r["question_idx"] == question)))
            rows = [r for r in rows if r["question_idx"] not in missing]
        out = []
        for row in rows:
            recipient = TEMPLATE.format(prompt_question=row["prompt_question"], prompt_option=row["prompt_option"])
            donor = donors[row["data_idx"]] if donors is not None else recipient
            out.append(Instance(f"culturalbench/{split}/{lang}/{row['data_idx']}", self.name, split, lang,
                                f"{lang}->en", donor, recipient, row["answer"], list(OPTIONS), {},
                                {"template": "en", "group": row["question_idx"], "country": row["country"]}))
        return out


TASK = register(CulturalBench())

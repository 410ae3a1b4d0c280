"""MKQA (CC BY-SA 3.0): open-domain questions in 26 languages, the paper's OOD set for generation;
En -> non-En, FFN, like XQuAD.

Source: the dataset's own file, `<root>/mkqa/mkqa.jsonl[.gz]` (or the one `mkqa*.jsonl[.gz]` there,
e.g. `../shared/data/mkqa/mkqa_sample6.jsonl.gz`), one record per line: example_id, query,
queries{lang}, answers{lang: [{type, text, entity, aliases}]}; or `hf:PATH`, a save of `apple/mkqa`
(its only split is `train`, the split name here too). `zh` means MKQA's `zh_cn`.

Donor: the English query; recipient: the query in `lang` (for `en` the same). The prompt is XQuAD's
template without the context line: our choice, the release does not publish its MKQA prompt.
A record whose gold in `lang` is No Answer (unanswerable, or long_answer without text or aliases)
is left out and counted in the load report, as a note, not an error.

Correct (grid, upper bound): a gold string (text or alias) contained in the answer's first line,
both normalised as MKQA's evaluation normalises (`metrics.mkqa_normalize`). Also MKQA's official exact
match and F1 (`metrics.mkqa_em_f1`, as apple/ml-mkqa's `mkqa_eval.py` computes them, no No Answer
threshold). The metric `mkqa` puts them together.
"""
from __future__ import annotations

import functools
import gzip

from .. import storage
from ..metrics import MKQA_LANG, mkqa_lang
from . import readers
from .base import Task
from .instance import Instance, InstanceError, RowError
from .registry import register

TEMPLATE = ("Human: Please answer these questions only based on the given context.\n\n"
            "Question: {question}\n\nAssistant: My answer would be:")
NO_ANSWER_TYPES = ("unanswerable", "long_answer")


def golds_of(answers, lang: str) -> list[str] | None:
    """The gold strings (texts and aliases) of one record in one language; [] where its gold is No
    Answer; RowError where the answers are malformed."""
    if not isinstance(answers, list) or not answers:
        raise RowError(f"answers.{lang}", "expected a non-empty list of answers")
    golds = []
    for answer in answers:
        if not isinstance(answer, dict) or not isinstance(answer.get("type"), str):
            raise RowError(f"answers.{lang}", "expected answers with a 'type'")
        aliases = answer.get("aliases") or []
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise RowError(f"answers.{lang}", "aliases must be a list of strings")
        text = answer.get("text")
        if answer["type"] == "unanswerable" or (answer["type"] == "long_answer" and not text and not aliases):
            continue
        golds.extend(([text] if isinstance(text, str) and text else []) + aliases)
    return list(dict.fromkeys(golds))


@functools.lru_cache(maxsize=2)
def _parsed(uri: str, data: bytes) -> tuple[tuple, tuple]:
    """(records, errors) of one MKQA file's bytes: parsed once, though every language reads the whole file
    (the full set is 10,000 records in 26 languages)."""
    # pyarrow may have unzipped a .gz already: look at the bytes
    text = (gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data).decode("utf-8")
    errors: list[InstanceError] = []
    return tuple(readers.parse_json_lines(uri, text, errors)), tuple(errors)


class MKQA(Task):
    name = "mkqa"
    source = "apple/mkqa"
    files = "mkqa/mkqa.jsonl.gz (or mkqa.jsonl)"
    family = "generation"
    metric = "mkqa"
    original_splits = ("train",)
    template = TEMPLATE
    offline_scaling = "OOD"  # its data in the paper's offline scaling table (release Asset/settings.png)

    def _file(self, root: str) -> str:
        directory = storage.join(root, "mkqa")
        names = storage.list_names(directory)
        for name in ("mkqa.jsonl.gz", "mkqa.jsonl"):
            if name in names:
                return storage.join(directory, name)
        found = [n for n in names if n.startswith("mkqa") and n.endswith((".jsonl", ".jsonl.gz"))]
        if len(found) != 1:
            raise FileNotFoundError(f"{directory}: expected mkqa.jsonl[.gz] (or one mkqa*.jsonl[.gz]), found "
                                    f"{', '.join(found) or 'none'}")
        return storage.join(directory, found[0])

    def _records(self, root: str, split: str, errors) -> tuple[str, list[tuple[int, object]] | None]:
        if root.startswith("hf:"):
            rows = readers.hf_split(root[3:], split, need_lang=False)
            return f"{root}[{split}]", list(enumerate(rows, 1))
        uri = self._file(root)
        try:
            records, parse_errors = _parsed(uri, storage.read_bytes(uri))
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            errors.append(InstanceError(uri, None, None, f"unreadable ({exc}): its instances are left out"))
            return uri, None
        errors.extend(parse_errors)
        return uri, list(records)

    def languages(self, split, root):
        try:
            _, records = self._records(root, split, [])
        except FileNotFoundError:
            return []
        found = set()
        for _, record in records or []:
            if isinstance(record, dict) and isinstance(record.get("queries"), dict):
                found.update(record["queries"])
        ours = {theirs: lang for lang, theirs in MKQA_LANG.items()}
        return sorted(ours.get(lang, lang) for lang in found)

    def load_original(self, root, split, lang, errors):
        source, records = self._records(root, split, errors)
        if records is None:
            return []
        theirs = mkqa_lang(lang)
        out, no_answer = [], 0
        for line, record in records:
            try:
                if not isinstance(record, dict):
                    raise RowError(None, "expected a JSON object")
                example_id = record.get("example_id")
                if not isinstance(example_id, (str, int)) or isinstance(example_id, bool):
                    raise RowError("example_id", "expected a string or an integer")
                queries, answers = record.get("queries"), record.get("answers")
                if not isinstance(queries, dict) or not isinstance(answers, dict):
                    raise RowError("queries" if not isinstance(queries, dict) else "answers",
                                   "expected an object keyed by language")
                if theirs not in queries:
                    raise RowError(f"queries.{theirs}", "missing: this record has no question in the language")
                recipient = readers.need_str(queries[theirs], f"queries.{theirs}")
                donor = readers.need_str(record.get("query") or queries.get("en"), "query")
                golds = golds_of(answers.get(theirs), theirs)
            except RowError as exc:
                errors.append(InstanceError(source, line, exc.field, str(exc)))
                continue
            if not golds:
                no_answer += 1
                continue
            out.append(Instance(f"mkqa/{split}/{lang}/{example_id}", self.name, split, lang, f"en->{lang}",
                                TEMPLATE.format(question=donor), TEMPLATE.format(question=recipient), golds[0],
                                [], {}, {"template": "en", "answers": golds}))
        if no_answer:
            errors.append(InstanceError(source, None, f"answers.{theirs}", f"{no_answer} record(s) whose gold in "
                                        f"{lang} is No Answer left out (counted, not an error)", note=True,
                                        reason="no_answer", rows=no_answer))
        return out


TASK = register(MKQA())

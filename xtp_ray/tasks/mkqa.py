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
both normalised as MKQA's evaluation normalises (`normalize`). Also MKQA's official exact match
and F1 (`em_f1`, as apple/ml-mkqa's `mkqa_eval.py` computes them, no No Answer threshold).
"""
from __future__ import annotations

import functools
import gzip
import re
import string
from collections import Counter

from .. import storage
from . import readers
from .base import Task
from .instance import Instance, InstanceError, RowError
from .registry import register

TEMPLATE = ("Human: Please answer these questions only based on the given context.\n\n"
            "Question: {question}\n\nAssistant: My answer would be:")
DATASET_LANG = {"zh": "zh_cn"}  # our language name -> MKQA's
NO_ANSWER_TYPES = ("unanswerable", "long_answer")
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


def dataset_lang(lang: str) -> str:
    return DATASET_LANG.get(lang, lang)


def tokens(text: str, lang: str) -> list[str]:
    """MKQA's normalisation as tokens: lower case, ASCII punctuation out, the language's articles out,
    then whitespace tokens, or one token per character in CHARACTER_LANGS. lang: MKQA's code."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    if lang in ARTICLES:
        text = re.sub(ARTICLES[lang], " ", text)
    parts = list(text) if lang in CHARACTER_LANGS else text.split()
    return [t for t in parts if t.strip()]


def normalize(text: str, lang: str) -> str:
    return " ".join(tokens(text, lang))


def _f1(prediction: str, gold: str, lang: str) -> float:
    gold_tokens = tokens(gold, lang) if gold else []
    predicted = tokens(prediction, lang) if prediction else []
    if not gold_tokens or not predicted:  # No Answer on either side: right only if both are
        return float(gold_tokens == predicted)
    common = sum((Counter(gold_tokens) & Counter(predicted)).values())
    if common == 0:
        return 0.0
    recall, precision = common / len(gold_tokens), common / len(predicted)
    return 2 * precision * recall / (precision + recall)


def em_f1(prediction: str, golds: list[str], lang: str) -> tuple[float, float]:
    """MKQA's official exact match and F1 of one prediction: the best over the gold strings. lang: ours
    or MKQA's code (`zh` and `zh_cn` alike)."""
    if not golds:
        raise ValueError("MKQA scores a prediction against at least one gold answer")
    lang = dataset_lang(lang)
    em = max(float(normalize(prediction, lang) == normalize(gold, lang)) for gold in golds)
    return em, max(_f1(prediction, gold, lang) for gold in golds)


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
    original_splits = ("train",)
    template = TEMPLATE
    coarse = ("ffn", (0, 0))
    offline_scaling = "OOD"  # its data in the paper's offline scaling table (release Asset/settings.png)
    metrics = ("em", "f1")
    open_answer = True

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
        ours = {theirs: lang for lang, theirs in DATASET_LANG.items()}
        return sorted(ours.get(lang, lang) for lang in found)

    def load_original(self, root, split, lang, errors):
        source, records = self._records(root, split, errors)
        if records is None:
            return []
        theirs = dataset_lang(lang)
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

    def score_text(self, instance, text):
        lang = dataset_lang(instance.lang)
        golds = instance.extra.get("answers") or [instance.gold]
        first_line = normalize(text.strip().split("\n", 1)[0] if text.strip() else "", lang)
        contained = any(g and g in first_line for g in (normalize(gold, lang) for gold in golds))
        em, f1 = em_f1(text, golds, lang)
        return {"correct": contained, "em": em, "f1": f1}


TASK = register(MKQA())

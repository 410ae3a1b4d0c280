"""Benchmarks as tasks: donor/recipient instances from real data, one interface.

Sources, chosen by the split name:
- `sample` / `unseen`: the paper's release files (`xtransplant_release/`), instance
  for instance; prompts are the release strings, byte for byte.
- `dev` (XNLI), `test` / `val` (XCOPA), `test` (XQuAD, MGSM), `eval` (GlobalOpinionQA):
  the original formats, prompts built from the English templates of SPEC 3 (the row
  says which template: `extra["template"]`).
A data root is a local directory, an s3:// URI, `hf:PATH` (a `datasets`
DatasetDict saved with `save_to_disk`, rows in the original-format fields plus
`lang`) or `hf:ORG/NAME` on the hub where reachable. The default root is the
package's bundled sample splits.

Malformed rows become InstanceError records naming file, line and field; the
other rows go on. Parallel files are checked for alignment (gold labels, lengths)
and misaligned pairs are dropped with a report, never scored.
"""
from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import asdict, dataclass, field
from importlib import resources

from . import storage
from .names import check_name, is_name

RELEASE_SPLITS = ("sample", "unseen")
ORIGINAL_SPLITS = {"xnli": ("dev",), "xcopa": ("test", "val"), "xquad": ("test",), "mgsm": ("test",),
                   "globalopinionqa": ("eval",)}
TASK_DIRS = {"xnli": "XNLI", "xcopa": "XCOPA", "xquad": "XQuAD", "globalopinionqa": "GlobalOpinionQA"}
TASKS = ("xnli", "xcopa", "xquad", "globalopinionqa", "mgsm")
# Task families, for the paper's coarse settings and the scoring mode.
FAMILY = {"xnli": "understanding", "xcopa": "understanding", "xquad": "generation",
          "globalopinionqa": "culture", "mgsm": "generation"}
XNLI_LABELS = {"entailment": "1", "neutral": "2", "contradiction": "3"}
XNLI_WORDS_EN = {"1": "Entail", "2": "Neutral", "3": "Contradict"}

TEMPLATES = {
    "xnli": ("Human: What do you think is the relationship between the premise and the hypothesis?\n\n"
             "Premise: {premise}\nHypothesis: {hypothesis}\n\n(1) Entail \n(2) Neutral\n(3) Contradict\n\n"
             "Assistant: If I had to select one of the options, my answer would be:"),
    "xquad": ("Human: Please answer these questions only based on the given context.\n\n"
              "Context: {context}\nQuestion: {question}\n\nAssistant: My answer would be:"),
    "xcopa": ("You are assigned to complete a two-category classification task.\n\nPremise: {premise}\n"
              "Options: (1) {choice1}\n(2) {choice2}\n\nPlease determine which of the two options is more "
              "likely to be the {relation} of the given premise.\n\nYour Answer:"),
    "globalopinionqa": ("Human: How would someone from {country} answer the following question:\n{question}\n"
                        "Here are the options:\n{options}\nAssistant: If I had to select one of the options, "
                        "my answer would be:"),
    "mgsm": "Question: {question}\nAnswer:",
}


@dataclass
class Instance:
    id: str  # "<task>/<split>/<lang>/<index>", stable across runs
    task: str
    split: str
    lang: str  # the language that is scored (the recipient's)
    direction: str  # "<donor lang>-><recipient lang>"
    donor: str
    recipient: str
    gold: str  # option label ("1", "A") or answer text / number
    options: list[str] = field(default_factory=list)  # option labels; [] for open answers
    label_words: dict[str, str] = field(default_factory=dict)  # option label -> word in `lang`
    extra: dict = field(default_factory=dict)  # template, answers, distribution, country

    def to_row(self) -> dict:
        row = asdict(self)
        row["label_words"] = json.dumps(self.label_words, ensure_ascii=False)
        row["extra"] = json.dumps(self.extra, ensure_ascii=False)
        return row

    @classmethod
    def from_row(cls, row: dict) -> "Instance":
        row = dict(row)
        row["options"] = list(row["options"])
        row["label_words"] = json.loads(row["label_words"])
        row["extra"] = json.loads(row["extra"])
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})


@dataclass
class InstanceError:
    file: str
    line: int | None  # 1-based; None for a whole-file problem
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.file + (f":{self.line}" if self.line else "")
        return f"{where}: {f'field {self.field!r}: ' if self.field else ''}{self.message}"


class MissingSplit(ValueError):
    """A datasets root without the split asked for."""


class RowError(ValueError):
    def __init__(self, field_name: str | None, message: str):
        super().__init__(message)
        self.field = field_name


def bundled_root() -> str:
    return str(resources.files("xtp_ray") / "data")


def _release_root(root: str) -> str:
    nested = storage.join(root, "xtransplant_release")
    return nested if storage.is_dir(nested) else root


def _file_text(uri: str) -> tuple[str | None, str | None]:
    """(a data file's text, None), or (None, why it is unusable: missing, not UTF-8, unreadable, empty)."""
    try:
        text = storage.read_text(uri)
    except FileNotFoundError:
        return None, "missing file"
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
    except OSError as exc:
        return None, f"unreadable ({exc})"
    return (text, None) if text.strip() else (None, "empty file")


def read_file_text(uri: str, errors: list[InstanceError]) -> str | None:
    """A data file's text, or None with one error naming the file and why it is unusable."""
    text, why = _file_text(uri)
    if why is not None:
        errors.append(InstanceError(uri, None, None, f"{why}: its instances are left out"))
    return text


def _json_lines(uri: str, errors: list[InstanceError]) -> list[tuple[int, object]] | None:
    """(line number, value) per non-empty line; bad JSON lines become errors; None (reported) if the
    file cannot be read at all."""
    text = read_file_text(uri, errors)
    return None if text is None else _parse_json_lines(uri, text, errors)


def _parse_json_lines(uri: str, text: str, errors: list[InstanceError]) -> list[tuple[int, object]]:
    out = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((line_no, json.loads(line)))
        except json.JSONDecodeError as exc:
            errors.append(InstanceError(uri, line_no, None, f"bad JSON ({exc.msg})"))
    return out


def _parallel(files: dict[str, str], first: str, errors: list[InstanceError]) -> dict[str, dict] | None:
    """Line -> value of each parallel file; None (one error, naming the file at fault) if one of them
    cannot be read: without it no line of `first` can be paired. Files of different lengths are
    reported; lines without a partner are left out line by line."""
    by_line, parsed, counts = {}, {}, {}
    for kind, uri in files.items():
        if uri in parsed:  # the donor file is the recipient file where the language is English
            by_line[kind] = parsed[uri]
            continue
        text, why = _file_text(uri)
        if why is not None:  # one line, naming the file read and the one at fault
            message = (f"{why}: its instances are left out" if kind == first
                       else f"left out whole: its parallel file {uri} is unusable ({why})")
            errors.append(InstanceError(files[first], None, None, message))
            return None
        counts[uri] = sum(1 for line in text.splitlines() if line.strip())
        by_line[kind] = parsed[uri] = dict(_parse_json_lines(uri, text, errors))
    if len(set(counts.values())) > 1:
        errors.append(InstanceError(files[first], None, None, "parallel files differ in length: " + ", ".join(
            f"{uri} has {n} lines" for uri, n in counts.items()) + "; lines without a partner are left out"))
    return by_line


def _need_str(value, name: str) -> str:
    if not isinstance(value, str):
        raise RowError(name, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise RowError(name, "empty")
    return value


def _check_gold(gold: str, options: list[str], name: str = "gold") -> str:
    if gold not in options:
        raise RowError(name, f"label {gold!r} is not one of the options {options}")
    return gold


def _languages(uri: str, prefix: str = "", suffix: str = ".json") -> list[str]:
    return [n[len(prefix):-len(suffix)] for n in storage.list_names(uri) if n.startswith(prefix) and n.endswith(suffix)]


# ---------------------------------------------------------------- alignment

def drop_misaligned(pairs: list[tuple[int, object, object, str, str]], donor_file: str, recipient_file: str,
                    errors: list[InstanceError]) -> list[int]:
    """Indices of parallel lines to keep, judged on gold labels and prompt lengths.

    pairs: (line, donor gold, recipient gold, donor prompt, recipient prompt). A
    same-instance pair has the same gold. A run of disagreements that never recovers
    (agreement from there on at most 60%, chance being 1/3 to 1/2) means the files
    are shifted: every pair from its first line on is dropped. Isolated
    disagreements drop their own line.
    """
    n = len(pairs)
    disagree = [k for k, p in enumerate(pairs) if p[1] != p[2]]
    shifted_from = None
    for k in disagree:
        agree = sum(1 for p in pairs[k:] if p[1] == p[2]) / (n - k)
        if agree <= 0.6 and n - k >= 5:
            shifted_from = k
            break
    ratios = [len(p[4]) / max(1, len(p[3])) for p in pairs]
    median = statistics.median(ratios) if ratios else 1.0
    keep = []
    for k, p in enumerate(pairs):
        if shifted_from is not None and k >= shifted_from:
            continue
        if p[1] != p[2]:
            errors.append(InstanceError(recipient_file, p[0], "gold",
                                        f"gold {p[2]!r} differs from the donor's {p[1]!r} in {donor_file}: "
                                        "not the same instance, pair dropped"))
            continue
        keep.append(k)
    if shifted_from is not None:
        tail = pairs[shifted_from:]
        odd_length = sum(1 for r in ratios[shifted_from:] if not 0.5 * median <= r <= 2 * median)
        errors.append(InstanceError(
            recipient_file, pairs[shifted_from][0], None,
            f"misaligned with {donor_file} from this line on: gold labels disagree on "
            f"{sum(1 for p in tail if p[1] != p[2])} of the {len(tail)} remaining lines "
            f"({odd_length} with an unusual length ratio); {len(tail)} pairs dropped"))
    return keep


# ---------------------------------------------------------------- release files

def _release_xnli_or_xcopa(task: str, root: str, split: str, lang: str, errors) -> list[Instance]:
    base = storage.join(_release_root(root), TASK_DIRS[task], f"{TASK_DIRS[task]}_{split}")
    options = ["1", "2", "3"] if task == "xnli" else ["1", "2"]
    files = {"donor": storage.join(base, "split", "en.json"), "recipient": storage.join(base, "split", f"{lang}.json"),
             "donor_gold": storage.join(base, "ans", "en.json"), "gold": storage.join(base, "ans", f"{lang}.json")}
    by_line = _parallel(files, "recipient", errors)
    if by_line is None:
        return []
    label_words = {}
    if task == "xnli":
        words = _json_lines(storage.join(base, "ans_lang", f"{lang}.json"), errors)
        label_words = words[0][1] if words and isinstance(words[0][1], dict) else {}
    rows = []
    for line in sorted(by_line["recipient"]):
        try:
            recipient = _need_str(by_line["recipient"][line], "prompt")
            gold = _check_gold(_need_str(by_line["gold"].get(line), "gold"), options)
        except RowError as exc:
            errors.append(InstanceError(files["recipient"], line, exc.field, str(exc)))
            continue
        try:
            donor = _need_str(by_line["donor"].get(line), "prompt")
            donor_gold = _need_str(by_line["donor_gold"].get(line), "gold")
        except RowError as exc:
            errors.append(InstanceError(files["donor"], line, exc.field, f"{exc} (no donor for this line)"))
            continue
        rows.append((line, donor_gold, gold, donor, recipient))
    keep = drop_misaligned(rows, files["donor"], files["recipient"], errors) if lang != "en" else range(len(rows))
    out = []
    for k in keep:
        line, _, gold, donor, recipient = rows[k]
        out.append(Instance(f"{task}/{split}/{lang}/{line - 1}", task, split, lang, f"en->{lang}", donor, recipient,
                            gold, options, label_words, {"template": "release"}))
    return out


def _release_xquad(root: str, split: str, lang: str, errors) -> list[Instance]:
    base = storage.join(_release_root(root), "XQuAD", f"XQuAD_{split}")
    donor_file = storage.join(base, "split", "xquad.en.json")
    recipient_file = storage.join(base, "split", f"xquad.{lang}.json")
    files = {"recipient": recipient_file, "donor": donor_file, "gold": storage.join(base, "ans", f"xquad.{lang}.json")}
    by_line = _parallel(files, "recipient", errors)
    if by_line is None:
        return []
    donors, golds = by_line["donor"], by_line["gold"]
    out = []
    for line, recipient in sorted(by_line["recipient"].items()):
        try:
            recipient = _need_str(recipient, "prompt")
            donor = _need_str(donors.get(line), "prompt (donor)")
            gold = _need_str(golds.get(line), "gold")
        except RowError as exc:
            errors.append(InstanceError(recipient_file, line, exc.field, str(exc)))
            continue
        out.append(Instance(f"xquad/{split}/{lang}/{line - 1}", "xquad", split, lang, f"en->{lang}", donor,
                            recipient, gold, [], {}, {"template": "release", "answers": [gold]}))
    return out


def _release_globalopinionqa(root: str, split: str, lang: str, errors) -> list[Instance]:
    base = storage.join(_release_root(root), "GlobalOpinionQA", f"GlobalOpinionQA_{split}")
    record_file = storage.join(base, "split", f"{lang}.json")
    translated_file = storage.join(base, "translated", f"{lang}.json")
    by_line = _parallel({"records": record_file, "translated": translated_file}, "records", errors)
    if by_line is None:
        return []
    records, translated = by_line["records"], by_line["translated"]
    if len(translated) != len(records):
        # Machine translation mangles option lists at times (e.g. "(سعيد"), so option
        # counts are no evidence; the files' line counts are: a shifted file pairs nothing.
        errors.append(InstanceError(record_file, None, None, f"left out whole: {translated_file} has "
                                    f"{len(translated)} prompts for its {len(records)} records, so they cannot be "
                                    "paired line by line"))
        return []
    out = []
    for line, record in sorted(records.items()):
        try:
            if not isinstance(record, dict):
                raise RowError(None, "expected a JSON object")
            recipient = _need_str(record.get("input_text"), "input_text")
            donor = _need_str(translated.get(line), "prompt (translated)")
            country = _need_str(record.get("country"), "country")
            distribution = _distribution(record.get("label"), "label")
            letters = _letters(len(distribution))
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


def _letters(n: int) -> list[str]:
    return [chr(ord("A") + k) for k in range(n)]


def _distribution(value, name: str) -> list[float]:
    if not isinstance(value, list) or len(value) < 2 or not all(isinstance(p, (int, float)) for p in value):
        raise RowError(name, "expected a list of at least two probabilities")
    if any(p < 0 for p in value) or not 0.98 <= sum(value) <= 1.02:
        raise RowError(name, f"not a probability distribution (sum {sum(value):.3f})")
    if len(value) > 26:
        raise RowError(name, "more than 26 options")
    return [float(p) for p in value]


# ---------------------------------------------------------------- original formats

def _records(task: str, root: str, split: str, lang: str, errors) -> tuple[str, list[tuple[int, object]] | None]:
    """(source name, [(line, record)]) of one language in the original format; records None (one error
    naming the file) where the file cannot be read or parsed."""
    if root.startswith("hf:"):
        return _hf_records(root[3:], split, lang)
    if task in ("xnli", "mgsm"):
        uri = (storage.join(root, "xnli", "dev", f"dev-{lang}.tsv") if task == "xnli"
               else storage.join(root, "mgsm", f"mgsm_{lang}.tsv"))
        fields = ("premise", "hypothesis", "label") if task == "xnli" else ("question", "answer")
        text = read_file_text(uri, errors)
        if text is None:
            return uri, None
        rows = list(csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE))
        return uri, [(k, dict(zip(fields, r)) if len(r) == len(fields) else r) for k, r in enumerate(rows, 1) if r]
    if task == "xcopa":
        uri = (storage.join(root, "xcopa", "copa_en_from_COPA-SSE", f"{split}.en.jsonl") if lang == "en"
               else storage.join(root, "xcopa", "data", lang, f"{split}.{lang}.jsonl"))
        return uri, _json_lines(uri, errors)
    uri = (storage.join(root, "xquad", f"xquad.{lang}.json") if task == "xquad"
           else storage.join(root, "globalopinionqa", "eval.json"))
    text = read_file_text(uri, errors)
    if text is None:
        return uri, None
    try:
        document = json.loads(text)
        if task == "globalopinionqa":
            if not isinstance(document, list):
                raise TypeError("expected a JSON list of records")
            return uri, list(enumerate(document, 1))
        records = []
        for article in document["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    records.append((len(records) + 1, {"id": qa["id"], "context": paragraph["context"],
                                                       "question": qa["question"],
                                                       "answers": [a["text"] for a in qa["answers"]]}))
        return uri, records
    except json.JSONDecodeError as exc:
        reason = f"bad JSON ({exc.msg}, line {exc.lineno})"
    except KeyError as exc:
        reason = f"no field {exc.args[0]!r} where the SQuAD layout (data/paragraphs/qas/answers) has one"
    except TypeError as exc:
        reason = str(exc) if task == "globalopinionqa" else "not in the SQuAD layout (data/paragraphs/qas/answers)"
    errors.append(InstanceError(uri, None, None, f"malformed {task} file: {reason}; its instances are left out"))
    return uri, None


def _hf_split(name: str, split: str):
    import datasets

    data = datasets.load_from_disk(name) if storage.is_dir(name) else datasets.load_dataset(name)
    if split not in data:
        raise MissingSplit(f"hf:{name} has no split {split!r}; it has {', '.join(data)}")
    if "lang" not in data[split].column_names:
        raise ValueError(f"hf:{name}[{split}] has no 'lang' column (each row names its language)")
    return data[split]


def _hf_records(name: str, split: str, lang: str) -> tuple[str, list[tuple[int, object]]]:
    rows = [r for r in _hf_split(name, split) if r.get("lang") == lang]
    return f"hf:{name}[{split}, lang {lang}]", list(enumerate(rows, 1))  # rows counted within the language


def _build_original(task: str, record, lang: str) -> tuple[str, str, list[str], dict]:
    """(prompt, gold, options, extra) from one original-format record."""
    if not isinstance(record, dict):
        raise RowError(None, f"malformed row: expected the fields of a {task} record, got {record!r:.80}")
    if task == "xnli":
        label = _need_str(record.get("label"), "label")
        if label not in XNLI_LABELS:
            raise RowError("label", f"{label!r} is not one of {sorted(XNLI_LABELS)}")
        return (TEMPLATES["xnli"].format(premise=_need_str(record.get("premise"), "premise"),
                                         hypothesis=_need_str(record.get("hypothesis"), "hypothesis")),
                XNLI_LABELS[label], ["1", "2", "3"], {})
    if task == "xcopa":
        relation = {"cause": "cause", "effect": "result"}.get(record.get("question"))
        if relation is None:
            raise RowError("question", "expected 'cause' or 'effect'")
        if record.get("label") not in (0, 1):
            raise RowError("label", f"{record.get('label')!r} is not 0 or 1")
        prompt = TEMPLATES["xcopa"].format(premise=_need_str(record.get("premise"), "premise"),
                                           choice1=_need_str(record.get("choice1"), "choice1"),
                                           choice2=_need_str(record.get("choice2"), "choice2"), relation=relation)
        return prompt, str(record["label"] + 1), ["1", "2"], {"idx": record.get("idx")}
    if task == "xquad":
        answers = record.get("answers")
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise RowError("answers", "expected a non-empty list of strings")
        prompt = TEMPLATES["xquad"].format(context=_need_str(record.get("context"), "context"),
                                           question=_need_str(record.get("question"), "question"))
        return prompt, answers[0], [], {"answers": answers, "qa_id": record.get("id")}
    if task == "mgsm":
        answer = _need_str(record.get("answer"), "answer").strip()
        try:
            float(answer.replace(",", ""))
        except ValueError:
            raise RowError("answer", f"{answer!r} is not a number") from None
        return TEMPLATES["mgsm"].format(question=_need_str(record.get("question"), "question")), answer, [], {}
    options = record.get("options")
    # Scale questions mix words and numbers: ["Not important at all", 1.0, 2.0, ...]
    if (not isinstance(options, list) or len(options) < 2
            or not all(isinstance(o, (str, int, float)) and not isinstance(o, bool) for o in options)):
        raise RowError("options", "expected a list of at least two option texts")
    options = [str(o) for o in options]
    distribution = _distribution(record.get("distribution"), "distribution")
    if len(distribution) != len(options):
        raise RowError("distribution", f"{len(distribution)} probabilities for {len(options)} options")
    letters = _letters(len(options))
    listed = "\n".join(f"({letter}) {option}" for letter, option in zip(letters, options))
    prompt = TEMPLATES["globalopinionqa"].format(country=_need_str(record.get("country"), "country"),
                                                 question=_need_str(record.get("question"), "question"),
                                                 options=listed)
    gold = letters[max(range(len(distribution)), key=distribution.__getitem__)]
    return prompt, gold, letters, {"country": record["country"], "distribution": distribution}


def _original(task: str, root: str, split: str, lang: str, errors) -> list[Instance]:
    donor_lang = "en"
    if task == "globalopinionqa" and lang != "en":
        raise ValueError("GlobalOpinionQA's original records are English only (lang 'en'); the translated "
                         "donors of the non-En -> En direction come with the release splits (sample/unseen)")
    source, recipient_records = _records(task, root, split, lang, errors)
    if recipient_records is None:
        return []
    donors = {}
    if lang != donor_lang:
        donor_source, donor_records = _records(task, root, split, donor_lang, errors)
        if donor_records is None:
            errors.append(InstanceError(source, None, None, f"left out whole: its parallel English file "
                                                            f"{donor_source} cannot be read"))
            return []
        donors = _parallel_donors(task, donor_records, donor_source, errors)
    out, built = [], []
    for line, record in recipient_records:
        try:
            prompt, gold, options, extra = _build_original(task, record, lang)
            key = extra.get("qa_id") if task == "xquad" else line
            if lang == donor_lang:
                donor, donor_gold = prompt, gold
            elif key not in donors:
                raise RowError(None, f"no parallel English instance in {donor_source}")
            else:
                donor, donor_gold = donors[key]
        except RowError as exc:
            errors.append(InstanceError(source, line, exc.field, str(exc)))
            continue
        built.append((line, donor_gold, gold, donor, prompt, options, extra))
    keep = range(len(built))
    if lang != donor_lang and task != "xquad":  # xquad pairs by question id; answers differ by language
        keep = drop_misaligned([b[:5] for b in built], "English", source, errors)
    for k in keep:
        line, _, gold, donor, prompt, options, extra = built[k]
        extra = {"template": "en", **{key: v for key, v in extra.items() if key != "qa_id"}}
        label_words = XNLI_WORDS_EN if task == "xnli" else {}
        out.append(Instance(f"{task}/{split}/{lang}/{line - 1}", task, split, lang, f"{donor_lang}->{lang}",
                            donor, prompt, gold, options, label_words if lang == "en" else {}, extra))
    return out


def _parallel_donors(task, donor_records, source, errors) -> dict:
    donors = {}
    for line, record in donor_records:
        try:
            prompt, gold, _, extra = _build_original(task, record, "en")
        except RowError as exc:
            errors.append(InstanceError(source, line, exc.field, str(exc)))
            continue
        donors[extra.get("qa_id") if task == "xquad" else line] = (prompt, gold)
    return donors


# ---------------------------------------------------------------- interface

def list_languages(task: str, split: str, data_root: str | None = None,
                   errors: list[InstanceError] | None = None) -> list[str]:
    """Languages of (task, split) found in a data location. A language that is not a safe name
    (`names.NAME`: it becomes part of shard and figure paths) is left out, and reported into `errors`."""
    root = data_root or bundled_root()
    found = _found_languages(task, split, root)
    bad = [lang for lang in found if not is_name(lang)]
    if bad and errors is not None:
        if root.startswith("hf:"):
            rows = _hf_split(root[3:], split)["lang"]
            source = f"{root}[{split}]"
            for lang in bad:
                lines = [k for k, value in enumerate(rows, 1) if value == lang]
                shown = ", ".join(map(str, lines[:5])) + (", ..." if len(lines) > 5 else "")
                errors.append(InstanceError(source, lines[0], "lang", f"{lang!r} is not a safe name (letters, "
                                            f"digits, '.', '_', '-'): {len(lines)} row(s) left out (rows {shown})"))
        else:
            for lang in bad:
                errors.append(InstanceError(root, None, "lang", f"{task} {split}: language {lang!r} (from a file "
                                            "name) is not a safe name (letters, digits, '.', '_', '-'): left out"))
    return [lang for lang in found if is_name(lang)]


def _found_languages(task: str, split: str, root: str) -> list[str]:
    if split in RELEASE_SPLITS:
        base = storage.join(_release_root(root), TASK_DIRS.get(task, "?"), f"{TASK_DIRS.get(task, '?')}_{split}")
        if task == "xquad":
            return _languages(storage.join(base, "split"), "xquad.")
        return [lang for lang in _languages(storage.join(base, "split")) if lang != "all"]
    if root.startswith("hf:"):
        return sorted({str(lang) for lang in _hf_split(root[3:], split)["lang"]} - {"None"})
    layout = {"xnli": (("xnli", "dev"), "dev-", ".tsv"), "mgsm": (("mgsm",), "mgsm_", ".tsv"),
              "xquad": (("xquad",), "xquad.", ".json")}
    if task == "xcopa":
        english = storage.exists(storage.join(root, "xcopa", "copa_en_from_COPA-SSE", f"{split}.en.jsonl"))
        return sorted(storage.list_names(storage.join(root, "xcopa", "data")) + (["en"] if english else []))
    if task == "globalopinionqa":
        return ["en"] if storage.exists(storage.join(root, "globalopinionqa", "eval.json")) else []
    parts, prefix, suffix = layout[task]
    return _languages(storage.join(root, *parts), prefix, suffix)


def task_splits(task: str) -> tuple[str, ...]:
    return (RELEASE_SPLITS if task != "mgsm" else ()) + ORIGINAL_SPLITS[task]


def load_instances(task: str, lang: str | None, split: str = "sample",
                   data_root: str | None = None) -> tuple[list[Instance], list[InstanceError]]:
    """Instances of one (task, language, split) and the errors of the rows left out."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    splits = task_splits(task)
    if split not in splits:
        raise ValueError(f"unknown split {split!r} for {task}; splits: {', '.join(splits)}")
    root = data_root or bundled_root()
    check_name("language", lang)
    languages = list_languages(task, split, root)
    if not lang or (languages and lang not in languages):
        raise ValueError(f"unknown language {lang!r} for {task} {split} in {root}; "
                         f"languages: {', '.join(languages) or 'none found'}")
    errors: list[InstanceError] = []
    if split in RELEASE_SPLITS:
        if task in ("xnli", "xcopa"):
            instances = _release_xnli_or_xcopa(task, root, split, lang, errors)
        elif task == "xquad":
            instances = _release_xquad(root, split, lang, errors)
        else:
            instances = _release_globalopinionqa(root, split, lang, errors)
    else:
        instances = _original(task, root, split, lang, errors)
    return instances, errors


def check_root(data_root: str | None) -> str:
    """The data root, or ValueError if a local or s3:// one is not a directory (an hf: root is checked
    when it is opened)."""
    root = data_root or bundled_root()
    if not root.startswith("hf:") and not storage.is_dir(root):
        what = "is a file, not a directory" if storage.exists(root) else "does not exist"
        raise ValueError(f"data root {root} {what}")
    return root


def describe(data_root: str | None = None) -> tuple[list[dict], list[InstanceError]]:
    """Tasks, splits, languages and sizes found in a data location (for `xtp tasks`), and what was left
    out (bad files, rows and language names)."""
    root = check_root(data_root)
    found, errors = [], []
    for task in TASKS:
        for split in task_splits(task):
            try:
                languages = list_languages(task, split, root, errors)
            except (FileNotFoundError, OSError):
                continue
            except MissingSplit:
                continue  # a datasets root holds the splits it holds
            for lang in languages:
                try:
                    instances, row_errors = load_instances(task, lang, split, root)
                except ValueError as exc:
                    errors.append(InstanceError(root, None, None, f"{task} {split} {lang}: {exc}"))
                    continue
                errors.extend(row_errors)
                found.append({"task": task, "split": split, "lang": lang, "instances": len(instances),
                              "errors": len(row_errors)})
    return found, errors

"""Reading data files: text, JSON lines, parallel files, the bundled root, `hf:` datasets; each bad
file or row becomes an InstanceError naming the file, line and field, and the rest goes on."""
from __future__ import annotations

import json
from importlib import resources

from .. import storage
from .instance import InstanceError, MissingSplit, RowError


def bundled_root() -> str:
    return str(resources.files("xtp_ray") / "data")


def release_root(root: str) -> str:
    nested = storage.join(root, "xtransplant_release")
    return nested if storage.is_dir(nested) else root


def file_text(uri: str) -> tuple[str | None, str | None]:
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
    text, why = file_text(uri)
    if why is not None:
        errors.append(InstanceError(uri, None, None, f"{why}: its instances are left out"))
    return text


def json_lines(uri: str, errors: list[InstanceError]) -> list[tuple[int, object]] | None:
    """(line number, value) per non-empty line; bad JSON lines become errors; None (reported) if the
    file cannot be read at all."""
    text = read_file_text(uri, errors)
    return None if text is None else parse_json_lines(uri, text, errors)


def parse_json_lines(uri: str, text: str, errors: list[InstanceError]) -> list[tuple[int, object]]:
    out = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((line_no, json.loads(line)))
        except json.JSONDecodeError as exc:
            errors.append(InstanceError(uri, line_no, None, f"bad JSON ({exc.msg})"))
    return out


def parallel(files: dict[str, str], first: str, errors: list[InstanceError],
             counts: dict[str, int] | None = None) -> dict[str, dict] | None:
    """Line -> value of each parallel file; None (one error, naming the file at fault) if one of them
    cannot be read: without it no line of `first` can be paired. Files of different lengths are
    reported; lines without a partner are left out line by line. `counts`, where given, receives each
    file's count of non-empty lines (a bad JSON line counts: it still holds its place)."""
    by_line, parsed = {}, {}
    counts = {} if counts is None else counts
    for kind, uri in files.items():
        if uri in parsed:  # the donor file is the recipient file where the language is English
            by_line[kind] = parsed[uri]
            continue
        text, why = file_text(uri)
        if why is not None:  # one line, naming the file read and the one at fault
            message = (f"{why}: its instances are left out" if kind == first
                       else f"left out whole: its parallel file {uri} is unusable ({why})")
            errors.append(InstanceError(files[first], None, None, message))
            return None
        counts[uri] = sum(1 for line in text.splitlines() if line.strip())
        by_line[kind] = parsed[uri] = dict(parse_json_lines(uri, text, errors))
    if len(set(counts.values())) > 1:
        errors.append(InstanceError(files[first], None, None, "parallel files differ in length: " + ", ".join(
            f"{uri} has {n} lines" for uri, n in counts.items()) + "; lines without a partner are left out",
            reason="misaligned"))
    return by_line


def need_str(value, name: str) -> str:
    if not isinstance(value, str):
        raise RowError(name, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise RowError(name, "empty")
    return value


def check_gold(gold: str, options: list[str], name: str = "gold") -> str:
    if gold not in options:
        raise RowError(name, f"label {gold!r} is not one of the options {options}")
    return gold


def languages_in(uri: str, prefix: str = "", suffix: str = ".json") -> list[str]:
    return [n[len(prefix):-len(suffix)] for n in storage.list_names(uri) if n.startswith(prefix) and n.endswith(suffix)]


def letters(n: int) -> list[str]:
    return [chr(ord("A") + k) for k in range(n)]


def distribution(value, name: str) -> list[float]:
    if not isinstance(value, list) or len(value) < 2 or not all(isinstance(p, (int, float)) for p in value):
        raise RowError(name, "expected a list of at least two probabilities")
    if any(p < 0 for p in value) or not 0.98 <= sum(value) <= 1.02:
        raise RowError(name, f"not a probability distribution (sum {sum(value):.3f})")
    if len(value) > 26:
        raise RowError(name, "more than 26 options")
    return [float(p) for p in value]


def hf_split(name: str, split: str, need_lang: bool = True):
    import datasets

    data = datasets.load_from_disk(name) if storage.is_dir(name) else datasets.load_dataset(name)
    if split not in data:
        raise MissingSplit(f"hf:{name} has no split {split!r}; it has {', '.join(data)}")
    if need_lang and "lang" not in data[split].column_names:
        raise ValueError(f"hf:{name}[{split}] has no 'lang' column (each row names its language)")
    return data[split]


def hf_records(name: str, split: str, lang: str) -> tuple[str, list[tuple[int, object]]]:
    rows = [r for r in hf_split(name, split) if r.get("lang") == lang]
    return f"hf:{name}[{split}, lang {lang}]", list(enumerate(rows, 1))  # rows counted within the language


def tsv_records(uri: str, fields: tuple[str, ...], errors: list[InstanceError]) -> tuple[str, list | None]:
    """(uri, [(line, {field: value})]) of a tab-separated file without a header; a row of another width
    stays a list (its task reports it); records None (reported) where the file is unusable."""
    import csv
    import io

    text = read_file_text(uri, errors)
    if text is None:
        return uri, None
    rows = list(csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE))
    return uri, [(k, dict(zip(fields, r)) if len(r) == len(fields) else r) for k, r in enumerate(rows, 1) if r]

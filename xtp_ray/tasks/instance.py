"""The unit of work: one donor/recipient instance, and the report of a row left out."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


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
    def from_row(cls, row: dict) -> Instance:
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
    note: bool = False  # counted and reported, but no error (a record a task leaves out by its own rule)
    reason: str = "malformed"  # why, as errors.jsonl names it (`results.leftout.REASONS`)
    rows: int | None = None  # rows it leaves out where more than its line (a shifted tail, a group); None: its
    # line's one row, or for a whole file, not counted

    def __str__(self) -> str:
        where = self.file + (f":{self.line}" if self.line else "")
        return f"{where}: {f'field {self.field!r}: ' if self.field else ''}{self.message}"


class MissingSplit(ValueError):
    """A datasets root without the split asked for."""


class RowError(ValueError):
    def __init__(self, field_name: str | None, message: str):
        super().__init__(message)
        self.field = field_name

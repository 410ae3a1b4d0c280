"""Rows a run left out, for any reason: one record each in `<run>/errors.jsonl`, counted by reason in the
run's last line, and a "Left out" section of the report per task and language (plus a note on every
table whose languages or rows shrank).

A record is one JSON object per line, every key present (null where it does not apply):

- `reason`: `malformed` (a row or file that cannot be read or parsed, a name that is no safe name),
  `misaligned` (parallel files that do not pair: a gold that differs, a shifted tail, lengths that
  differ), `too_long` (a prompt over the context), `group_skipped` (an instance scored with its group,
  left out because another member was), `empty` (a language whose data holds no instance), `missing` (a
  task and split asked for with no language in the data root), or a
  note's reason (`no_answer`: MKQA's No Answer golds); `unclassified` for the lines of older runs.
- `error`: the one line a user reads (`FILE:LINE: field 'F': why`, or `INSTANCE: why`).
- `note`: true where a task leaves rows out by its own rule (counted, no error); false for bad data.
- `task`, `split`, `lang`: where the rows belong (`lang` null where the language name itself is refused).
- `instance_id`: the instance left out where one was read (too_long, group_skipped), else null.
- `file`, `line`, `field`: where in the data (null for what is found at run time).
- `rows`: how many rows the record leaves out (1 for a row; more for a shifted tail or a group; null for a
  whole file whose rows were not counted).
- `limit`: the token limit a too_long prompt exceeded.

This module reads and writes through `storage` only: the aggregate job (no torch) uses it.
"""
from __future__ import annotations

import json
import logging

from .. import storage

log = logging.getLogger("xtp_ray")

ERRORS_FILE = "errors.jsonl"
KEYS = ("reason", "error", "note", "task", "split", "lang", "instance_id", "file", "line", "field", "rows", "limit")
# reason -> (words for a count of rows, words for a count of whole files)
REASONS = {
    "malformed": ("malformed", "unreadable or malformed"),
    "misaligned": ("misaligned", "misaligned"),
    "too_long": ("too long", "too long"),
    "group_skipped": ("skipped with their group", "skipped with their group"),
    "empty": ("empty", "without instances"),
    "missing": ("missing", "missing"),
    "no_answer": ("with a No Answer gold", "with No Answer golds"),
    "unclassified": ("left out", "left out"),  # a line of an older version: {"error": <line>} only
}


def record(reason: str, error: str, *, note: bool = False, task: str | None = None, split: str | None = None,
           lang: str | None = None, instance_id: str | None = None, file: str | None = None,
           line: int | None = None, field: str | None = None, rows: int | None = 1,
           limit: int | None = None) -> dict:
    """One left-out record (see the module docstring)."""
    return {"reason": reason, "error": error, "note": note, "task": task, "split": split, "lang": lang,
            "instance_id": instance_id, "file": file, "line": line, "field": field, "rows": rows, "limit": limit}


def from_instance_error(error, task: str, split: str, lang: str | None) -> dict:
    """The record of a loader's `tasks.InstanceError` found while loading (task, split, lang)."""
    rows = error.rows if error.rows is not None else (1 if error.line else None)
    return record(error.reason, str(error), note=error.note, task=task, split=split, lang=lang, file=error.file,
                  line=error.line, field=error.field, rows=rows)


def from_skipped(entry: dict) -> dict:
    """A record of a shard footer's `xtp_skipped` list. Shards of older versions stored
    {instance_id, reason: <text>}: their task, split and lang come from the id."""
    if "error" in entry:
        return {key: entry.get(key) for key in KEYS}
    instance_id, text = entry.get("instance_id"), str(entry.get("reason"))
    parts = str(instance_id).split("/")
    where = dict(zip(("task", "split", "lang"), parts)) if len(parts) >= 4 else {}
    reason = "group_skipped" if text.startswith("its group") else "too_long"
    return record(reason, f"{instance_id}: {text}", instance_id=instance_id, **where)


def skipped_in(footers: dict[str, dict[str, str]], shards) -> list[dict]:
    """The records stored with the given committed shards (their footers' `xtp_skipped`), in shard order."""
    out = []
    for name in sorted(set(shards) & set(footers)):
        out += [from_skipped(entry) for entry in json.loads(footers[name].get("xtp_skipped") or "[]")]
    return out


def write(run_uri: str, records: list[dict]) -> str:
    uri = storage.join(run_uri, ERRORS_FILE)
    storage.write_text(uri, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return uri


def read(run_uri: str) -> list[dict]:
    """The run's records; [] where it has no errors.jsonl (older runs, or one written elsewhere). Lines of
    older runs ({"error": <line>}) are `unclassified`."""
    uri = storage.join(run_uri, ERRORS_FILE)
    if not storage.exists(uri):
        return []
    out = []
    for number, text in enumerate(storage.read_text(uri).splitlines(), 1):
        if not text.strip():
            continue
        try:
            entry = json.loads(text)
        except json.JSONDecodeError as exc:
            log.warning("%s:%d: bad JSON (%s): line skipped in the report", uri, number, exc.msg)
            continue
        if not isinstance(entry, dict) or "error" not in entry:
            log.warning("%s:%d: not a left-out record: line skipped in the report", uri, number)
            continue
        if "reason" not in entry:  # an older version's line: a row or a file, not told apart
            entry = {**entry, "reason": "unclassified", "rows": 1}
        out.append({key: entry.get(key) for key in KEYS} | {"note": bool(entry.get("note"))})
    return out


# ---------------------------------------------------------------- counting

def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def describe(records: list[dict]) -> str:
    """The records counted by reason: "22 rows longer than 1,024 tokens, 2 malformed rows, 1 malformed file"."""
    rows: dict[tuple, int] = {}
    files: dict[str, int] = {}
    for r in records:
        if r["rows"] is None:
            files[r["reason"]] = files.get(r["reason"], 0) + 1
        else:
            key = (r["reason"], r["limit"] if r["reason"] == "too_long" else None)
            rows[key] = rows.get(key, 0) + r["rows"]
    parts = []
    for (reason, limit), n in rows.items():
        words = REASONS.get(reason, (reason, reason))[0]
        if reason == "too_long" and limit:
            parts.append(f"{_plural(n, 'row')} longer than {limit:,} tokens")
        elif reason == "unclassified":
            parts.append(f"{_plural(n, 'line')} of an older version's errors.jsonl")
        elif reason in ("group_skipped", "no_answer"):
            parts.append(f"{_plural(n, 'row')} {words}")
        else:
            parts.append(f"{n:,} {words} row{'' if n == 1 else 's'}")
    for reason, n in files.items():
        if reason != "missing":
            parts.append(f"{_plural(n, 'whole file')} {REASONS.get(reason, (reason, reason))[1]}")
    missing = [f"{r['task']} {r['split']}" for r in records if r["reason"] == "missing"]
    if missing:
        parts.append(f"no data for {', '.join(missing)}")
    return ", ".join(parts)


def total(records: list[dict]) -> str:
    """"24 rows" / "24 rows and 1 whole file" / "24 rows and 1 task split without data"."""
    rows = sum(r["rows"] for r in records if r["rows"] is not None)
    files = sum(1 for r in records if r["rows"] is None and r["reason"] != "missing")
    missing = sum(1 for r in records if r["reason"] == "missing")
    more = ([_plural(files, "whole file")] if files else []) + ([f"{_plural(missing, 'task split')} without data"]
                                                               if missing else [])
    return _plural(rows, "row") + "".join(f" and {part}" for part in more)


def languages_in_tables(tables: dict) -> dict[tuple[str, str], set]:
    """(task, split) -> the languages its report tables show."""
    shown: dict[tuple[str, str], set] = {}
    for key, table in tables.items():
        task, split, _ = key.split("/")
        shown.setdefault((task, split), set()).update(table["by_lang"])
    return shown


def lost_languages(records: list[dict], shown: dict[tuple[str, str], set]) -> dict[str, dict]:
    """"task/split" -> {"shown": its languages with results, "all": those and every language a record names,
    "lost": the languages without results}, for every (task, split) a record or `shown` names."""
    named: dict[tuple[str, str], set] = {}
    for r in records:
        if r["task"] and r["split"]:
            named.setdefault((r["task"], r["split"]), set()).update([r["lang"]] if r["lang"] else [])
    out = {}
    for pair in sorted(set(shown) | set(named)):
        have = set(shown.get(pair, set()))
        every = have | named.get(pair, set())
        out["/".join(pair)] = {"shown": sorted(have), "all": sorted(every), "lost": sorted(every - have)}
    return out


def section(records: list[dict], tables: dict) -> dict:
    """report.json's `left_out`: totals, per (task, split, lang) what was left out and whether the language
    still has a table row, and per (task, split) the note a table shows."""
    errors = [r for r in records if not r["note"]]
    notes = [r for r in records if r["note"]]
    languages = lost_languages(records, languages_in_tables(tables))
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["task"] or "-", r["split"] or "-", r["lang"] or "-"), []).append(r)
    by_lang = []
    for (task, split, lang), members in sorted(groups.items()):
        shown = lang in languages.get(f"{task}/{split}", {}).get("shown", [])
        by_lang.append({"task": task, "split": split, "lang": lang, "left_out": describe(members),
                        "rows": sum(r["rows"] or 0 for r in members),
                        "errors": sum(1 for r in members if not r["note"]),
                        "in_tables": shown, "example": members[0]["error"]})
    tasks = {}
    for key, langs in languages.items():
        task, split = key.split("/")
        members = [r for r in records if r["task"] == task and r["split"] == split]
        if not members:
            continue
        tasks[key] = {"languages": len(langs["shown"]), "of": len(langs["all"]), "lost": langs["lost"],
                      "left_out": describe(members), "note": _note(task, split, langs, members)}
    return {"errors": total(errors) if errors else None, "errors_by_reason": describe(errors),
            "notes": total(notes) if notes else None, "notes_by_reason": describe(notes),
            "by_lang": by_lang, "tasks": tasks}


def _note(task: str, split: str, langs: dict, members: list[dict]) -> str:
    """"xquad test: 1 of 12 languages (lost: ar, ...); 22 rows longer than 1,024 tokens"."""
    if not langs["all"]:  # no language at all: the data is missing, or every name was refused
        found = [r for r in members if r["reason"] != "missing"]
        return f"{task} {split}: " + (describe(found) if found else "no data found")
    lost = f" (lost: {', '.join(langs['lost'])})" if langs["lost"] else ""
    return f"{task} {split}: {len(langs['shown'])} of {len(langs['all'])} languages{lost}; {describe(members)}"


def table_note(report: dict, key: str) -> str | None:
    """The note the table `task/split/module` carries where its rows or languages were left out, else None."""
    entry = (report.get("left_out") or {}).get("tasks", {}).get(key.rsplit("/", 1)[0])
    return f"Left out: {entry['note']} (see Left out)." if entry else None


def languages_text(report: dict, side: dict) -> str:
    """An offline-scaling side's languages: "1 langs" where nothing was left out of its task and split, else
    "1 of 12 langs; 22 rows longer than 1,024 tokens"."""
    entry = (report.get("left_out") or {}).get("tasks", {}).get(f"{side['task']}/{side['split']}")
    shown = len(side["by_lang"])
    if not entry:
        return f"{shown} langs"
    return f"{shown} of {entry['of']} langs; {entry['left_out']}"


# ---------------------------------------------------------------- rendering

def _summary(part: dict) -> str:
    """The section's opening sentence, before markup: the bad data and the notes counted by reason."""
    head = f"Bad data: {part['errors'] or 'none'}" + (f" ({part['errors_by_reason']})" if part["errors"] else "")
    if part["notes"]:
        head += f". Notes (a task's own rule, not errors): {part['notes']} ({part['notes_by_reason']})"
    return head


def render_markdown(report: dict, md) -> list[str]:
    """The "Left out" section's lines (none where nothing was); `md` escapes text from data."""
    part = report.get("left_out")
    if not part or not part["by_lang"]:
        return []
    lines = ["## Left out", "", _summary(part) + ". Every one is a line of `errors.jsonl`.", "",
             "| task | split | lang | left out | in the tables | e.g. |", "|---|---|---|---|---|---|"]
    for e in part["by_lang"]:
        lines.append(f"| {md(e['task'])} | {md(e['split'])} | {md(e['lang'])} | {md(e['left_out'])} | "
                     f"{'yes' if e['in_tables'] else '**no: lost whole**'} | {md(_short(e['example']))} |")
    return lines + [""]


def render_html(report: dict) -> str:
    """The "Left out" section as HTML ("" where nothing was)."""
    import html

    from .markup import html_table

    part = report.get("left_out")
    if not part or not part["by_lang"]:
        return ""
    rows = [[html.escape(e["task"]), html.escape(e["split"]), html.escape(e["lang"]), html.escape(e["left_out"]),
             "yes" if e["in_tables"] else "<strong>no: lost whole</strong>", html.escape(_short(e["example"]))]
            for e in part["by_lang"]]
    return (f"<h2>Left out</h2><p>{html.escape(_summary(part))}. Every one is a line of <code>errors.jsonl</code>."
            "</p>" + html_table(["task", "split", "lang", "left out", "in the tables", "e.g."], rows))


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."

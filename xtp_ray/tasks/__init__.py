"""The tasks floor: benchmarks as registered tasks behind one interface.

One module per benchmark (`xnli`, `xcopa`, `xquad`, `globalopinionqa`, `mgsm`, `mkqa`, `culturalbench`) owns
its splits and formats, direction, template, family (and so its coarse setting) and its metric (`metrics.py`,
by name), which `Task.score` applies; `registry` (tasks by name: `registry.get(name)`) finds it, and `custom`
makes a lab's own benchmark from a directory holding `task.yaml`, without code. The shared parts: `instance`
(Instance, InstanceError), `readers` (files, parallel files, `hf:` datasets), `misalignment` (drifted parallel
files), `release_options` (the release's option files: XNLI, XCOPA), `base`
(the Task interface and the original-format pairing). The default data root is the package's
bundled sample splits.

Malformed rows become InstanceError records naming file, line and field; the other rows go on.
Parallel files are checked for alignment (gold labels, lengths) and misaligned pairs are dropped
with a report, never scored.
"""
from __future__ import annotations

from .. import storage
from ..names import check_name, is_name

# each benchmark module registers its task at import, in this order (TASKS, `xtp tasks`, error messages)
# isort: off
from . import xnli  # noqa: F401
from . import xcopa  # noqa: F401
from . import xquad  # noqa: F401
from . import globalopinionqa  # noqa: F401
from . import mgsm  # noqa: F401
from . import mkqa  # noqa: F401
from . import culturalbench  # noqa: F401
# isort: on
from .base import RELEASE_SPLITS, Task
from .custom import CustomTask, discover
from .instance import Instance, InstanceError, MissingSplit, RowError
from .readers import bundled_root, hf_split
from .registry import get, names

TASKS = names()
TEMPLATES = {name: get(name).template for name in TASKS}

__all__ = ["RELEASE_SPLITS", "TASKS", "TEMPLATES", "Instance", "InstanceError", "MissingSplit", "RowError", "Task",
           "bundled_root", "check_root", "describe", "discover", "find", "get", "list_languages", "load_instances",
           "names", "task_splits"]


def find(task: str, data_root: str | None = None) -> Task:
    """A built-in task, or an own task of the data root (`custom.discover`; read again where another
    root's task of that name was read before)."""
    known = task in names()
    if data_root and (not known or (isinstance(get(task), CustomTask) and get(task).root != data_root)):
        discover(data_root)
    return get(task)


def list_languages(task: str, split: str, data_root: str | None = None,
                   errors: list[InstanceError] | None = None) -> list[str]:
    """Languages of (task, split) found in a data location. A language that is not a safe name
    (`names.NAME`: it becomes part of shard and figure paths) is left out, and reported into `errors`."""
    root = data_root or bundled_root()
    found = find(task, data_root).languages(split, root)
    bad = [lang for lang in found if not is_name(lang)]
    if bad and errors is not None:
        if root.startswith("hf:"):
            rows = hf_split(root[3:], split)["lang"]
            source = f"{root}[{split}]"
            for lang in bad:
                lines = [k for k, value in enumerate(rows, 1) if value == lang]
                shown = ", ".join(map(str, lines[:5])) + (", ..." if len(lines) > 5 else "")
                errors.append(InstanceError(source, lines[0], "lang", f"{lang!r} is not a safe name (letters, "
                                            f"digits, '.', '_', '-'): {len(lines)} row(s) left out (rows {shown})",
                                            rows=len(lines)))
        else:
            for lang in bad:
                errors.append(InstanceError(root, None, "lang", f"{task} {split}: language {lang!r} (from a file "
                                            "name) is not a safe name (letters, digits, '.', '_', '-'): left out"))
    return [lang for lang in found if is_name(lang)]


def task_splits(task: str) -> tuple[str, ...]:
    return get(task).splits()


def load_instances(task: str, lang: str | None, split: str = "sample",
                   data_root: str | None = None) -> tuple[list[Instance], list[InstanceError]]:
    """Instances of one (task, language, split) and the errors of the rows left out (with notes:
    `InstanceError.note`, left out by the task's rule, counted but no error)."""
    definition = find(task, data_root)
    splits = definition.splits()
    if split not in splits:
        raise ValueError(f"unknown split {split!r} for {task}; splits: {', '.join(splits)}")
    root = data_root or bundled_root()
    check_name("language", lang)
    languages = list_languages(task, split, root)
    if not lang or (languages and lang not in languages):
        raise ValueError(f"unknown language {lang!r} for {task} {split} in {root}; "
                         f"languages: {', '.join(languages) or 'none found'}")
    errors: list[InstanceError] = []
    return definition.load(root, split, lang, errors), errors


def check_root(data_root: str | None) -> str:
    """The data root, or ValueError if a local or s3:// one is not a directory (an hf: root is checked
    when it is opened)."""
    root = data_root or bundled_root()
    if not root.startswith("hf:") and not storage.is_dir(root):
        what = "is a file, not a directory" if storage.exists(root) else "does not exist"
        raise ValueError(f"data root {root} {what}")
    return root


def describe(data_root: str | None = None) -> tuple[list[dict], list[dict], list[InstanceError]]:
    """What `xtp tasks` lists: every registered task (own tasks of the root included), split by split.

    Returns (found, missing, left out). found: a row per (task, split, language) with data:
    `instances` (rows loaded), `groups` (questions scored together, for a task with groups; else
    None), `errors` and `notes` (lines of the left-out report). missing: a row per (task, split) the
    root holds no data for, with `where` its files go (relative to a local or s3:// root) and `source`, the
    dataset they come from.
    Left out: bad files, rows and language names; notes (`InstanceError.note`) are left out by a
    task's own rule and are no error."""
    root = check_root(data_root)
    own = discover(data_root)
    found, missing, errors = [], [], []
    for task in dict.fromkeys((*TASKS, *own)):
        definition = find(task, data_root)
        for split in task_splits(task):
            try:
                languages = list_languages(task, split, root, errors)
            except (FileNotFoundError, OSError, MissingSplit):  # a root holds the splits it holds
                languages = []
            if not languages:
                where = (f"a split {split!r} in the datasets save" if root.startswith("hf:")
                         else definition.files_of(split))
                missing.append({"task": task, "split": split, "where": where, "source": definition.source_of(split)})
            for lang in languages:
                try:
                    instances, row_errors = load_instances(task, lang, split, root)
                except ValueError as exc:
                    errors.append(InstanceError(root, None, None, f"{task} {split} {lang}: {exc}"))
                    continue
                errors.extend(row_errors)
                groups = {i.extra["group"] for i in instances if "group" in i.extra}
                found.append({"task": task, "split": split, "lang": lang, "instances": len(instances),
                              "groups": len(groups) if groups else None,
                              "errors": sum(1 for e in row_errors if not e.note),
                              "notes": sum(1 for e in row_errors if e.note)})
    return found, missing, errors

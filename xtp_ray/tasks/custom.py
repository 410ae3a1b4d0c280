"""A lab's own benchmark, without code: a directory under the data root holding `task.yaml` and
`<split>/<lang>.jsonl`.

task.yaml:
    name: mybench             # the directory's name; letters, digits, '.', '_', '-'
    family: understanding     # understanding | generation | culture (the paper's coarse setting)
    metric: choice            # choice | contains | number | distribution
    direction: en->x          # en->x: the English donor, the recipient in <lang> is scored; x->en: reverse
    template: "Q: {prompt}\nA:"   # optional: applied to each donor and recipient prompt
    options: ["1", "2"]       # optional: the option labels (choice), unless each line gives its own

Each JSONL line is one instance: {"id", "donor", "recipient", "gold", "options"?, "group"?}. `gold` is an option
label (choice), an answer or a list of answers (contains), a number (number), or the probabilities of
the options, labelled A, B, ... (distribution). Bad lines are reported one by one; the rest runs.
Scoring uses the built-in tasks' registered metrics (`metrics.py`), by the same names: choice as XCOPA's,
contains as XQuAD's (with SQuAD EM/F1), number as MGSM's, distribution as GlobalOpinionQA's (with the JS
similarity from option log-probs). The family's coarse setting is the built-in tasks' (`base.FAMILIES`).
A `group` names instances scored together, as CulturalBench's questions: a group is right only when
all its instances are, and every figure counts groups (`results/partials.py`).
"""
from __future__ import annotations

import yaml

from .. import storage
from ..names import is_name
from . import readers
from .base import FAMILIES, Task
from .instance import Instance, InstanceError, RowError
from .registry import REGISTRY, register

SPEC_NAME = "task.yaml"
METRICS = ("choice", "contains", "number", "distribution")  # the registered metrics (metrics.py) task.yaml may name
DIRECTIONS = ("en->x", "x->en")


class CustomTask(Task):
    """A task read from `<root>/<name>/task.yaml`; its instances from `<root>/<name>/<split>/<lang>.jsonl`."""

    def __init__(self, root: str, spec: dict, where: str):
        def need(field, allowed=None):
            value = spec.get(field)
            if not isinstance(value, str) or (allowed and value not in allowed):
                raise ValueError(f"{where}: field {field!r}: expected " +
                                 (f"one of {', '.join(allowed)}" if allowed else "a string") + f", got {value!r}")
            return value

        unknown = sorted(set(spec) - {"name", "family", "metric", "direction", "template", "options"})
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
        self.name = need("name")
        self.family = need("family", tuple(FAMILIES))
        self.metric = need("metric", METRICS)
        self.donor_is_english = need("direction", DIRECTIONS) == "en->x"
        self.template = spec.get("template")
        if self.template is not None and (not isinstance(self.template, str) or "{prompt}" not in self.template):
            raise ValueError(f"{where}: field 'template': expected a string holding {{prompt}}")
        self.options = spec.get("options")
        if self.options is not None and (not isinstance(self.options, list) or len(self.options) < 2
                                         or not all(isinstance(o, str) and o for o in self.options)):
            raise ValueError(f"{where}: field 'options': expected a list of at least two labels")
        self.root = root
        self.base = storage.join(root, self.name)
        self.source = f"own task ({where})"
        self.files = f"{self.name}/{{split}}/<lang>.jsonl"
        self.original_splits = tuple(n for n in storage.list_names(self.base) if n != SPEC_NAME and is_name(n)
                                     and storage.is_dir(storage.join(self.base, n)))

    def languages(self, split, root):
        return readers.languages_in(storage.join(self.base, split), "", ".jsonl")

    def load(self, root, split, lang, errors):
        uri = storage.join(self.base, split, f"{lang}.jsonl")
        lines = readers.json_lines(uri, errors)
        out, seen = [], set()
        for line, row in lines or []:
            try:
                instance = self._instance(row, split, lang)
                if instance.id in seen:
                    raise RowError("id", f"{row['id']!r} appears twice")
            except RowError as exc:
                errors.append(InstanceError(uri, line, exc.field, str(exc)))
                continue
            seen.add(instance.id)
            out.append(instance)
        order = {}  # a group's members side by side (shards cut between groups), groups in file order
        keys = [instance.extra.get("group", f"\0{k}") for k, instance in enumerate(out)]
        for key in keys:
            order.setdefault(key, len(order))
        return [instance for _, _, instance in sorted(zip((order[key] for key in keys), range(len(out)), out))]

    def _instance(self, row, split: str, lang: str) -> Instance:
        if not isinstance(row, dict):
            raise RowError(None, "expected a JSON object")
        ident = row.get("id")
        if not isinstance(ident, (str, int)) or isinstance(ident, bool) or not is_name(str(ident)):
            raise RowError("id", "expected a name (letters, digits, '.', '_', '-')")
        donor, recipient = (readers.need_str(row.get(k), k) for k in ("donor", "recipient"))
        if self.template:
            donor, recipient = self.template.format(prompt=donor), self.template.format(prompt=recipient)
        options = row.get("options", self.options) or []
        if not isinstance(options, list) or not all(isinstance(o, str) and o for o in options):
            raise RowError("options", "expected a list of option labels")
        gold, extra = row.get("gold"), {"template": "own"}
        if "group" in row:
            group = row["group"]
            if isinstance(group, bool) or not isinstance(group, (str, int)) or not str(group).strip():
                raise RowError("group", "expected a name or a number")
            extra["group"] = str(group)
        if self.metric == "choice":
            if len(options) < 2:
                raise RowError("options", "a choice task needs at least two options (in task.yaml or the line)")
            gold = readers.check_gold(readers.need_str(gold, "gold"), options)
        elif self.metric == "contains":
            answers = gold if isinstance(gold, list) else [gold]
            if not answers or not all(isinstance(a, str) and a.strip() for a in answers):
                raise RowError("gold", "expected an answer or a list of answers")
            gold, extra["answers"] = answers[0], answers
        elif self.metric == "number":
            gold = readers.need_str(str(gold) if isinstance(gold, (int, float)) and not isinstance(gold, bool)
                                    else gold, "gold").strip()
            try:
                float(gold.replace(",", ""))
            except ValueError:
                raise RowError("gold", f"{gold!r} is not a number") from None
        else:
            distribution = readers.distribution(gold, "gold")
            options = readers.letters(len(distribution))
            gold = options[max(range(len(distribution)), key=distribution.__getitem__)]
            extra["distribution"] = distribution
        english = "en"
        direction = f"{english}->{lang}" if self.donor_is_english else f"{lang}->{english}"
        return Instance(f"{self.name}/{split}/{lang}/{ident}", self.name, split, lang, direction, donor, recipient,
                        gold, list(options), {}, extra)


def discover(data_root: str | None) -> list[str]:
    """Register the own tasks under a data root (directories holding task.yaml); their names. A
    task.yaml that is malformed, or names another directory or a built-in task, is refused in one line."""
    if not data_root or data_root.startswith("hf:") or not storage.is_dir(data_root):
        return []
    found = []
    for name in storage.list_names(data_root):
        uri = storage.join(data_root, name, SPEC_NAME)
        if not is_name(name) or not storage.exists(uri):
            continue
        try:
            spec = yaml.safe_load(storage.read_text(uri))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ValueError(f"{uri}: not valid YAML ({exc})") from None
        if not isinstance(spec, dict):
            raise ValueError(f"{uri}: expected a mapping of fields")
        if spec.get("name") != name:
            raise ValueError(f"{uri}: field 'name': {spec.get('name')!r} is not its directory's name {name!r}")
        existing = REGISTRY.get(name)
        if existing is not None and not isinstance(existing, CustomTask):
            raise ValueError(f"{uri}: field 'name': {name!r} is a built-in task; name it otherwise")
        REGISTRY.pop(name, None)  # an own task of another root (or read before): this root's wins
        register(CustomTask(data_root, spec, uri))
        found.append(name)
    return found

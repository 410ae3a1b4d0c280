"""The release's prompt-ready parallel files of the option tasks (XNLI, XCOPA):
`<TASK>_<split>/split/<lang>.json` one JSON prompt per line, `ans/<lang>.json` one gold per line,
`ans_lang/<lang>.json` the label words (XNLI); the English file is the donor, paired line by line
and checked for drift by the gold labels."""
from __future__ import annotations

from .. import storage
from . import readers
from .instance import Instance, InstanceError, RowError
from .misalignment import drop_misaligned


def load_option_release(task, root: str, split: str, lang: str, options: list[str], errors: list[InstanceError],
                        with_label_words: bool = False) -> list[Instance]:
    base = task.release_base(root, split)
    files = {"donor": storage.join(base, "split", "en.json"), "recipient": storage.join(base, "split", f"{lang}.json"),
             "donor_gold": storage.join(base, "ans", "en.json"), "gold": storage.join(base, "ans", f"{lang}.json")}
    by_line = readers.parallel(files, "recipient", errors)
    if by_line is None:
        return []
    label_words = {}
    if with_label_words:
        words = readers.json_lines(storage.join(base, "ans_lang", f"{lang}.json"), errors)
        label_words = words[0][1] if words and isinstance(words[0][1], dict) else {}
    rows = []
    for line in sorted(by_line["recipient"]):
        try:
            recipient = readers.need_str(by_line["recipient"][line], "prompt")
            gold = readers.check_gold(readers.need_str(by_line["gold"].get(line), "gold"), options)
        except RowError as exc:
            errors.append(InstanceError(files["recipient"], line, exc.field, str(exc)))
            continue
        try:
            donor = readers.need_str(by_line["donor"].get(line), "prompt")
            donor_gold = readers.need_str(by_line["donor_gold"].get(line), "gold")
        except RowError as exc:
            errors.append(InstanceError(files["donor"], line, exc.field, f"{exc} (no donor for this line)"))
            continue
        rows.append((line, donor_gold, gold, donor, recipient))
    keep = drop_misaligned(rows, files["donor"], files["recipient"], errors) if lang != "en" else range(len(rows))
    out = []
    for k in keep:
        line, _, gold, donor, recipient = rows[k]
        out.append(Instance(f"{task.name}/{split}/{lang}/{line - 1}", task.name, split, lang, f"en->{lang}", donor,
                            recipient, gold, options, label_words, {"template": "release"}))
    return out

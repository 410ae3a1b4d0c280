"""The contract every registered task keeps, checked for each one: a new task is covered by registering it.

For every (task, split) of the registry: its splits name where their files go and where they come from; on
the data at hand (the bundled samples, ../shared/data, tests/data) its languages, its instances, a scoring
round trip (the gold answer is right, another answer wrong, as generated text and, for option tasks, by
option log-probs) and a bad row (reported in one line naming the file, the rest loaded). A split with no
data at hand is skipped, and the skip says where its files go and which dataset they come from.
"""
import functools
import gzip
import json
import shutil
from pathlib import Path

import pytest

from xtp_ray import storage
from xtp_ray.names import MODULES, is_name
from xtp_ray.tasks import Instance, bundled_root, get, list_languages, load_instances, names

ROOTS = {"the bundled samples": bundled_root(), "../shared/data": str(Path(__file__).parents[2] / "shared" / "data"),
         "tests/data": str(Path(__file__).parent / "data")}
ROOTS["../shared/data"] = next((str(p) for p in (Path(ROOTS["../shared/data"]), Path("/work/shared/data"))
                                if p.is_dir()), ROOTS["../shared/data"])
# Found by this contract, left to the task's owner (strict: the test fails once it is fixed, to drop the entry).
KNOWN_DEFECTS: dict[tuple[str, str], str] = {}
PAIRS = [(task, split) for task in names() for split in get(task).splits()]


@functools.cache
def at_hand(task: str, split: str) -> tuple[str, list[str]] | None:
    """(data root, languages) of the first root holding the split; None where none does."""
    for root in ROOTS.values():
        if not Path(root).is_dir():
            continue
        try:
            languages = list_languages(task, split, root)
        except (OSError, ValueError):  # a root holds the splits it holds (MissingSplit is a ValueError)
            continue
        if languages:
            return root, languages
    return None


def data_or_skip(task: str, split: str) -> tuple[str, list[str]]:
    found = at_hand(task, split)
    if found is None:
        definition = get(task)
        pytest.skip(f"no data at hand for {task} {split} (looked in {', '.join(ROOTS)}): its files go to "
                    f"{definition.files_of(split)} under a data root, from {definition.source_of(split)}")
    return found


def scored_language(languages: list[str]) -> str:
    """A language other than English where there is one: its donor and recipient are paired across files."""
    return next((lang for lang in languages if lang != "en"), languages[0])


@functools.cache
def loaded(task: str, split: str) -> tuple[str, str, list[Instance], list]:
    root, languages = at_hand(task, split)
    lang = scored_language(languages)
    instances, errors = load_instances(task, lang, split, root)
    return root, lang, instances, errors


def other_answer(instance: Instance, instances: list[Instance]) -> str:
    """A wrong answer: another option, or another instance's gold that neither holds nor is held by this gold."""
    if instance.options:
        return f"({next(option for option in instance.options if option != instance.gold)})"
    gold = instance.gold.lower()
    return next((i.gold for i in instances if i.gold.lower() not in gold and gold not in i.gold.lower()), "")


@pytest.mark.parametrize("task, split", PAIRS, ids=[f"{t}-{s}" for t, s in PAIRS])
class TestTaskContract:
    def test_the_split_says_where_its_files_go_and_where_they_come_from(self, task, split):
        definition = get(task)
        assert definition.name == task and is_name(split)
        assert len(set(definition.splits())) == len(definition.splits())
        assert definition.files_of(split).strip() and definition.source_of(split).strip()
        assert definition.family in ("understanding", "generation", "culture")
        module, (source, target) = definition.coarse
        assert module in MODULES and all(layer == "last" or isinstance(layer, int) for layer in (source, target))

    def test_languages_are_safe_names(self, task, split):
        root, languages = data_or_skip(task, split)
        assert languages and len(set(languages)) == len(languages)
        assert all(is_name(lang) for lang in languages), languages
        if get(task).donor_is_english:  # English is the donor of every other language, and its own self-transplant
            assert "en" in languages, (root, languages)

    def test_instances_load_whole_and_name_their_task(self, task, split):
        data_or_skip(task, split)
        root, lang, instances, errors = loaded(task, split)
        definition = get(task)
        assert instances, (root, lang, [str(e) for e in errors])
        assert all("\n" not in str(error) for error in errors)
        assert len({i.id for i in instances}) == len(instances)
        donor = "en" if definition.donor_is_english else lang
        for instance in instances:
            assert instance.id.startswith(f"{task}/{split}/{lang}/")
            assert (instance.task, instance.split, instance.lang) == (task, split, lang)
            assert instance.direction == (f"{donor}->{lang}" if definition.donor_is_english else f"{lang}->en")
            assert instance.donor.strip() and instance.recipient.strip() and instance.gold.strip()
            assert bool(instance.options) is not definition.open_answer
            assert not instance.options or instance.gold in instance.options
            assert Instance.from_row(instance.to_row()) == instance

    def test_the_gold_answer_scores_right_and_another_answer_wrong(self, task, split):
        data_or_skip(task, split)
        _, _, instances, _ = loaded(task, split)
        definition = get(task)
        for instance in instances[:5]:
            right, wrong = (f"({instance.gold})" if instance.options else instance.gold), other_answer(instance,
                                                                                                   instances)
            for text, expected in ((right, True), (wrong, False)):
                result = definition.score(instance, text)
                assert result["correct"] is expected, (instance.id, text, instance.gold, result)
                assert result["score"] == float(expected)
            if not instance.options:  # an open answer has no options to score by log-probs: refused, not guessed
                with pytest.raises(ValueError, match="needs generated text"):
                    definition.score(instance, None, [0.0])
                continue
            for option in instance.options:
                logprobs = [0.0 if o == option else -5.0 for o in instance.options]
                result = definition.score(instance, None, logprobs)
                assert result["correct"] is (option == instance.gold), (instance.id, option, result)

    def test_a_bad_row_is_one_line_naming_its_file_and_the_rest_loads(self, task, split, tmp_path, monkeypatch,
                                                                       request):
        data_or_skip(task, split)
        if (task, split) in KNOWN_DEFECTS:
            request.applymarker(pytest.mark.xfail(reason=KNOWN_DEFECTS[task, split], strict=True))
        root, lang, instances, errors = loaded(task, split)
        read = []
        real_read = storage.read_bytes
        monkeypatch.setattr(storage, "read_bytes", lambda uri: read.append(uri) or real_read(uri))
        load_instances(task, lang, split, root)  # which files it reads, from the real root
        monkeypatch.undo()
        copied = {uri: tmp_path / Path(uri).relative_to(root) for uri in dict.fromkeys(read)}
        for uri, path in copied.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(uri, path)  # as stored (storage reads a .gz file decompressed)
        ours = [path for path in copied.values() if lang in path.name.replace(".", "-").split("-")
                or path.stem == lang]
        target = (ours or list(copied.values()))[0]  # the recipient's rows: the first file of its language
        line = break_a_row(target)
        again, new_errors = load_instances(task, lang, split, str(tmp_path))
        bad = [str(e) for e in new_errors if not e.note]
        assert all("\n" not in text for text in bad)
        before = {str(e).replace(root, str(tmp_path)) for e in errors if not e.note}
        new = [text for text in bad if text not in before]  # one line for the bad row, none for the others
        assert len(new) == 1 and new[0].startswith(f"{target}:{line}:" if line else f"{target}:"), (target, new)
        assert 0 < len(instances) - 1 <= len(again) <= len(instances), (len(instances), len(again))


def break_a_row(path: Path) -> int | None:
    """Make one row of a data file malformed; the line broken, or None where the file is one JSON document
    (its second record becomes a string)."""
    data = path.read_bytes()
    packed = data[:2] == b"\x1f\x8b"
    text = (gzip.decompress(data) if packed else data).decode("utf-8")
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if isinstance(document, (dict, list)):
        records = first_record_list(document)
        records[1] = "not a record"
        text, line = json.dumps(document, ensure_ascii=False), None
    else:
        lines = text.split("\n")
        line = 2  # the second row (after a header, where the format has one)
        lines[line - 1] = "\u0000not a row\tx"
        text = "\n".join(lines)
    path.write_bytes(gzip.compress(text.encode("utf-8")) if packed else text.encode("utf-8"))
    return line


def first_record_list(document):
    """The innermost list of two or more objects on the JSON document's first path (its rows: SQuAD's qas)."""
    if isinstance(document, list) and len(document) > 1 and all(isinstance(item, dict) for item in document):
        return first_record_list(document[0]) or document
    children = document.values() if isinstance(document, dict) else document if isinstance(document, list) else ()
    for child in children:
        found = first_record_list(child)
        if found is not None:
            return found
    return None

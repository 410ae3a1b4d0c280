"""Task loaders on the real data: bundled release samples, and ../shared/data where present."""
import json
from pathlib import Path

import pytest

from xtp_ray.tasks import TEMPLATES, Instance, bundled_root, describe, list_languages, load_instances

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data not at {SHARED}")
RELEASE = Path(bundled_root()) / "xtransplant_release"


def _lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.parametrize("task, languages", [("xnli", 15), ("xquad", 12), ("xcopa", 12), ("globalopinionqa", 24)])
def test_release_sample_counts(task, languages):
    langs = list_languages(task, "sample")
    assert len(langs) == languages  # XCOPA: 11 languages + English COPA
    for lang in langs:
        instances, errors = load_instances(task, lang, "sample")
        assert (len(instances), errors) == (50, []), (task, lang)


def test_release_prompts_are_byte_for_byte():
    for task, folder, donor_name, recipient_name in [
        ("xnli", "XNLI/XNLI_sample/split", "en.json", "sw.json"),
        ("xcopa", "XCOPA/XCOPA_sample/split", "en.json", "qu.json"),
        ("xquad", "XQuAD/XQuAD_sample/split", "xquad.en.json", "xquad.th.json"),
    ]:
        lang = recipient_name.split(".")[-2]
        instances, _ = load_instances(task, lang, "sample")
        assert [i.recipient for i in instances] == _lines(RELEASE / folder / recipient_name)
        assert [i.donor for i in instances] == _lines(RELEASE / folder / donor_name)
        assert all(i.direction == f"en->{lang}" for i in instances)
    goqa, _ = load_instances("globalopinionqa", "ja", "sample")
    folder = RELEASE / "GlobalOpinionQA/GlobalOpinionQA_sample"
    assert [i.recipient for i in goqa] == [r["input_text"] for r in _lines(folder / "split/ja.json")]
    assert [i.donor for i in goqa] == _lines(folder / "translated/ja.json")
    assert goqa[0].direction == "ja->en"


def test_release_golds_and_fields():
    xnli, _ = load_instances("xnli", "de", "sample")
    assert [i.gold for i in xnli[:3]] == ["1", "3", "2"]
    assert xnli[0].label_words == {"1": "Nach sich ziehen", "2": "Neutral", "3": "Widersprechen"}
    assert xnli[0].id == "xnli/sample/de/0" and xnli[0].options == ["1", "2", "3"]
    xquad, _ = load_instances("xquad", "de", "sample")
    assert (xquad[0].gold, xquad[1].gold) == ("23-16", "New England Patriots")
    goqa, _ = load_instances("globalopinionqa", "de", "sample")
    first = goqa[0]
    assert first.extra["country"] == "Germany" and first.options == ["A", "B"] and first.gold == "B"
    assert first.extra["distribution"] == pytest.approx([0.1616161616, 0.8383838383])
    en, _ = load_instances("xnli", "en", "sample")
    assert all(i.donor == i.recipient and i.direction == "en->en" for i in en)


def test_instance_row_round_trip():
    goqa, _ = load_instances("globalopinionqa", "de", "sample")
    assert Instance.from_row(goqa[3].to_row()) == goqa[3]


@needs_shared
def test_misaligned_german_xnli_unseen_is_reported_on_the_real_file():
    instances, errors = load_instances("xnli", "de", "unseen", str(SHARED))
    assert len(instances) == 210  # lines 1..210 pair correctly
    assert len(errors) == 1
    error = errors[0]
    assert error.file.endswith("XNLI_unseen/split/de.json") and error.line == 211
    assert "misaligned" in str(error) and "790 pairs dropped" in str(error)
    french, french_errors = load_instances("xnli", "fr", "unseen", str(SHARED))
    assert (len(french), french_errors) == (1000, [])


@needs_shared
@pytest.mark.parametrize("task, lang, split, count", [
    ("xnli", "sw", "dev", 2490), ("xcopa", "sw", "test", 500), ("xcopa", "en", "val", 100),
    ("xquad", "zh", "test", 1190), ("mgsm", "bn", "test", 250),
])
def test_original_formats_build_english_template_prompts(task, lang, split, count):
    instances, errors = load_instances(task, lang, split, str(SHARED))
    assert (len(instances), errors) == (count, [])
    first = instances[0]
    assert first.extra["template"] == "en"
    assert first.direction == f"en->{lang}"


@needs_shared
def test_original_prompts_match_the_release_template():
    xnli, _ = load_instances("xnli", "en", "dev", str(SHARED))
    assert xnli[0].recipient == TEMPLATES["xnli"].format(
        premise="And he said, Mama, I'm home.",
        hypothesis="He called his mom as soon as the school bus dropped him off.")
    assert xnli[0].gold == "2"
    xquad, _ = load_instances("xquad", "de", "test", str(SHARED))
    english, _ = load_instances("xquad", "en", "test", str(SHARED))
    assert xquad[0].donor == english[0].recipient  # paired by question id
    assert xquad[0].gold == "308"  # digits survive translation
    goqa, errors = load_instances("globalopinionqa", "en", "eval", str(SHARED))
    assert len(goqa) == 4624 and len(errors) == 9  # nine records carry an all-zero distribution
    assert all("distribution" == e.field for e in errors)
    scale = next(i for i in goqa if "(B) 1.0" in i.recipient)
    assert scale.options[:2] == ["A", "B"]


def test_malformed_rows_are_reported_and_the_rest_goes_on(tmp_path):
    base = tmp_path / "XNLI" / "XNLI_sample"
    for sub in ("split", "ans", "ans_lang"):
        (base / sub).mkdir(parents=True)
    prompt = json.dumps("Premise: a\nHypothesis: b")
    (base / "split/en.json").write_text("\n".join([prompt] * 5) + "\n")
    (base / "ans/en.json").write_text('"1"\n"2"\n"3"\n"1"\n"2"\n')
    (base / "split/sw.json").write_text("\n".join([prompt, '{"not": "a string"}', '""', "{bad json", prompt]) + "\n")
    (base / "ans/sw.json").write_text('"1"\n"2"\n"3"\n"1"\n"7"\n')
    (base / "ans_lang/sw.json").write_text('{"1": "a", "2": "b", "3": "c"}\n')
    instances, errors = load_instances("xnli", "sw", "sample", str(tmp_path))
    assert [i.id for i in instances] == ["xnli/sample/sw/0"]
    messages = sorted(str(e) for e in errors)
    sw = str(tmp_path / "XNLI/XNLI_sample/split/sw.json")
    assert messages == sorted([
        f"{sw}:2: field 'prompt': expected a string, got dict",
        f"{sw}:3: field 'prompt': empty",
        f"{sw}:4: bad JSON (Expecting property name enclosed in double quotes)",
        f"{sw}:5: field 'gold': label '7' is not one of the options ['1', '2', '3']",
    ])


def test_unknown_task_language_or_split_lists_what_exists():
    with pytest.raises(ValueError, match="unknown task 'nope'; tasks: xnli, xcopa, xquad"):
        load_instances("nope", "sw")
    with pytest.raises(ValueError, match="unknown language 'xx'.*languages: ar, bg, de"):
        load_instances("xnli", "xx", "sample")
    with pytest.raises(ValueError, match="unknown split 'train'.*splits: sample, unseen, dev"):
        load_instances("xnli", "sw", "train")


def test_hf_datasets_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {"premise": ["A man sleeps.", "Mtu analala."], "hypothesis": ["Someone rests.", "Mtu anapumzika."],
            "label": ["entailment", "entailment"], "lang": ["en", "sw"]}
    datasets.DatasetDict({"dev": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "xnli"))
    assert list_languages("xnli", "dev", f"hf:{tmp_path / 'xnli'}") == ["en", "sw"]
    instances, errors = load_instances("xnli", "sw", "dev", f"hf:{tmp_path / 'xnli'}")
    assert errors == [] and len(instances) == 1
    assert instances[0].donor == TEMPLATES["xnli"].format(premise="A man sleeps.", hypothesis="Someone rests.")
    assert "Mtu analala." in instances[0].recipient and instances[0].gold == "1"


def test_describe_lists_bundled_splits():
    found, missing, errors = describe()
    assert errors == []  # the bundled samples are clean
    assert {"task": "xnli", "split": "sample", "lang": "sw", "instances": 50, "groups": None, "errors": 0,
            "notes": 0} in found
    assert len({(f["task"], f["lang"]) for f in found}) == 15 + 12 + 12 + 24
    assert {(m["task"], m["split"]) for m in missing} == {
        ("xnli", "unseen"), ("xnli", "dev"), ("xcopa", "unseen"), ("xcopa", "test"), ("xcopa", "val"),
        ("xquad", "unseen"), ("xquad", "test"), ("globalopinionqa", "unseen"), ("globalopinionqa", "eval"),
        ("mgsm", "test"), ("mkqa", "train"), ("culturalbench", "test")}


BUILT_IN = ("xnli", "xcopa", "xquad", "globalopinionqa", "mgsm", "mkqa", "culturalbench")


def _tasks_cli(*argv):
    """`xtp tasks` in its own process: (exit code, stdout ending in the heavy modules it imported, stderr)."""
    import subprocess
    import sys

    code = ("import sys\nfrom xtp_ray.cli import main\ncode = main(sys.argv[1:])\n"
            "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'ray') if m in sys.modules))\nsys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code, "tasks", *argv], capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr


def test_tasks_names_every_built_in_task_and_where_the_missing_ones_go():
    code, out, err = _tasks_cli()
    assert code == 0, err
    assert "HEAVY []" in out  # listing never imports the engine
    table, _, rest = out.partition("\nno data in the bundled samples")
    listed = {line.split()[0] for line in table.splitlines()[1:]
              if line and not line.startswith(("instances:", "left"))}
    assert listed == {"xnli", "xcopa", "xquad", "globalopinionqa"}  # the samples the package bundles
    missing = {tuple(line.split()[:2]): line for line in rest.splitlines()[1:] if line.split()[:1] != ["HEAVY"]}
    assert {task for task, _ in missing} == {"xnli", "xcopa", "xquad", "globalopinionqa", "mgsm", "mkqa",
                                              "culturalbench"} == set(BUILT_IN)
    assert "mkqa/mkqa.jsonl.gz" in missing[("mkqa", "train")] and "[apple/mkqa]" in missing[("mkqa", "train")]
    assert "culturalbench/CulturalBench-Hard.csv" in missing[("culturalbench", "test")]
    assert "[kellycyy/CulturalBench]" in missing[("culturalbench", "test")]
    assert "mgsm/mgsm_<lang>.tsv" in missing[("mgsm", "test")] and "[juletxara/mgsm]" in missing[("mgsm", "test")]
    assert "xtransplant_release/XQuAD/XQuAD_unseen/" in missing[("xquad", "unseen")]


def test_tasks_counts_rows_and_questions_and_lists_despite_rows_left_out(tmp_path):
    from test_culturalbench import culturalbench_rows, write_culturalbench
    from test_custom_task import write_own_task

    rows = culturalbench_rows(3)
    rows[5]["answer"] = "maybe"  # row 5 is malformed: its question (1) is left out whole
    write_culturalbench(tmp_path, rows, translations=("de",))
    write_own_task(tmp_path)
    (tmp_path / "mybench" / "unseen").mkdir()  # an own split without data yet
    code, out, err = _tasks_cli("--data-root", str(tmp_path))
    assert code == 0, err  # rows left out are counted, not failed
    lines = {tuple(line.split()[:3]): line.split()[3:] for line in out.splitlines()}
    # 2 whole questions of 4 rows; 2 lines left out: the bad row, and its question without its four rows
    assert lines[("culturalbench", "test", "en")] == ["8", "2", "2", "0"]
    assert lines[("mybench", "test", "sw")] == ["2", "-", "0", "0"]
    assert any(line.split()[:2] == ["mybench", "unseen"] and "mybench/unseen/<lang>.jsonl" in line
               for line in out.splitlines())
    assert any(line.split()[:2] == ["mkqa", "train"] and "[apple/mkqa]" in line for line in out.splitlines())
    assert "left out: 4 line(s) on stderr" in out  # the two above, in each of en and de
    assert [line for line in err.splitlines() if "'answer'" in line] == [
        f"left out: {tmp_path / 'culturalbench' / 'CulturalBench-Hard.csv'}:7: field 'answer': 'maybe' is not True "
        "or False"] * 2


@needs_shared
def test_tasks_on_the_shared_data_exits_0_and_names_what_it_leaves_out():
    code, out, err = _tasks_cli("--data-root", str(SHARED))
    assert code == 0, err
    assert any("XNLI_unseen/split/de.json:211: misaligned" in line for line in err.splitlines())
    listed = {line.split()[0] for line in out.splitlines()[1:] if line.split()[:1] and line.split()[0] in BUILT_IN}
    assert listed == set(BUILT_IN)  # culturalbench: under "no data", with its source


def test_malformed_tsv_rows_in_the_original_format(tmp_path):
    folder = tmp_path / "xnli" / "dev"
    folder.mkdir(parents=True)
    rows = ["A man sleeps.\tSomeone rests.\tentailment", "Two dogs.\tNo dogs.\tcontradiction"]
    (folder / "dev-en.tsv").write_text("\n".join(rows) + "\n")
    (folder / "dev-sw.tsv").write_text("Mtu analala.\tMtu anapumzika.\tentailment\nonly one field\n")
    instances, errors = load_instances("xnli", "sw", "dev", str(tmp_path))
    assert [i.id for i in instances] == ["xnli/dev/sw/0"]
    assert [str(e) for e in errors] == [
        f"{folder / 'dev-sw.tsv'}:2: malformed row: expected the fields of a xnli record, got ['only one field']"]

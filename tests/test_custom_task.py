"""A lab's own benchmark without code: a data directory with task.yaml and <split>/<lang>.jsonl is a
task like the built-in ones (listed, loaded, scored); bad lines and a bad task.yaml get one line each."""
import json

import pytest

from xtp_ray.cli import main
from xtp_ray.tasks import get, load_instances

TASK_YAML = """name: mybench
family: understanding
metric: choice
direction: en->x
template: "Question: {prompt}\\nAnswer:"
options: ["1", "2"]
"""


def write_own_task(root, lines_by_lang=None, spec=TASK_YAML, name="mybench", split="test"):
    """The README's worked example: two languages of a two-option task."""
    lines_by_lang = lines_by_lang or {
        "en": [{"id": "q1", "donor": "Is ice cold? (1) yes (2) no", "recipient": "Is ice cold? (1) yes (2) no",
                "gold": "1"},
               {"id": "q2", "donor": "Is fire cold? (1) yes (2) no", "recipient": "Is fire cold? (1) yes (2) no",
                "gold": "2"}],
        "sw": [{"id": "q1", "donor": "Is ice cold? (1) yes (2) no",
                "recipient": "Je, barafu ni baridi? (1) ndiyo (2) hapana",
                "gold": "1"},
               {"id": "q2", "donor": "Is fire cold? (1) yes (2) no",
                "recipient": "Je, moto ni baridi? (1) ndiyo (2) hapana",
                "gold": "2"}]}
    (root / name / split).mkdir(parents=True, exist_ok=True)
    (root / name / "task.yaml").write_text(spec)
    for lang, lines in lines_by_lang.items():
        (root / name / split / f"{lang}.jsonl").write_text(
            "".join(line if isinstance(line, str) else json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    return root


def test_an_own_task_is_listed_loaded_and_scored(tmp_path, capsys):
    root = write_own_task(tmp_path / "data")
    assert main(["tasks", "--data-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert any(row.split()[:4] == ["mybench", "test", "sw", "2"] for row in out.splitlines()), out
    instances, errors = load_instances("mybench", "sw", "test", str(root))
    assert errors == [] and [i.id for i in instances] == ["mybench/test/sw/q1", "mybench/test/sw/q2"]
    first = instances[0]
    assert first.direction == "en->sw" and first.options == ["1", "2"]
    assert first.recipient == "Question: Je, barafu ni baridi? (1) ndiyo (2) hapana\nAnswer:"
    assert first.donor.startswith("Question: Is ice cold?")
    task = get(first.task)
    assert task.score(first, " (1)")["correct"] and not task.score(first, " (1) or (2)")["correct"]
    assert task.score(first, None, [-0.1, -2.0])["correct"]


def test_bad_lines_are_reported_one_by_one_and_the_rest_goes_on(tmp_path):
    root = write_own_task(tmp_path / "data", {"sw": [
        {"id": "q1", "donor": "d", "recipient": "r", "gold": "1"},
        {"id": "q2", "donor": "d", "recipient": "r"},
        {"id": "q3", "donor": "d", "recipient": "r", "gold": "3"},
        {"id": "q4", "donor": "d", "recipient": "r", "gold": "1", "group": ["g1"]},
        {"id": "../q5", "donor": "d", "recipient": "r", "gold": "1"},
        {"id": "q1", "donor": "d", "recipient": "r", "gold": "2"},
        "{broken\n"]})
    instances, errors = load_instances("mybench", "sw", "test", str(root))
    assert [i.id for i in instances] == ["mybench/test/sw/q1"]
    file = f"{root}/mybench/test/sw.jsonl"
    assert [str(e) for e in errors] == [
        f"{file}:7: bad JSON (Expecting property name enclosed in double quotes)",
        f"{file}:2: field 'gold': expected a string, got NoneType",
        f"{file}:3: field 'gold': label '3' is not one of the options ['1', '2']",
        f"{file}:4: field 'group': expected a name or a number",
        f"{file}:5: field 'id': expected a name (letters, digits, '.', '_', '-')",
        f"{file}:6: field 'id': 'q1' appears twice"]


@pytest.mark.parametrize("metric, line, answer, correct", [
    ("contains", {"gold": ["Paris", "City of Light"]}, " It is paris.", True),
    ("number", {"gold": 42}, " so 6 x 7 = 42", True),
    ("number", {"gold": "1,000"}, " 999", False),
    ("distribution", {"gold": [0.2, 0.7, 0.1], "recipient": "(A) x (B) y (C) z"}, " (B)", True),
])
def test_every_metric_scores_as_its_built_in_model(tmp_path, metric, line, answer, correct):
    spec = TASK_YAML.replace("metric: choice", f"metric: {metric}").replace('options: ["1", "2"]\n', "")
    row = {"id": "x", "donor": "d", "recipient": "r", **line}
    root = write_own_task(tmp_path / "data", {"de": [row]}, spec=spec)
    [instance], errors = load_instances("mybench", "de", "test", str(root))
    assert errors == []
    result = get(instance.task).score(instance, answer)
    assert result["correct"] is correct
    built_in = {"contains": "xquad", "number": "mgsm", "distribution": "globalopinionqa"}[metric]
    own = get(instance.task)  # the built-in task's metric, per-row metrics and open answers; its family's setting
    assert (own.metric, own.metrics, own.open_answer) == (get(built_in).metric, get(built_in).metrics,
                                                          get(built_in).open_answer)
    assert own.coarse == get("xnli").coarse  # TASK_YAML's family: understanding
    if metric == "contains":
        assert set(result) >= {"em", "f1"}
    if metric == "distribution":
        assert instance.options == ["A", "B", "C"] and instance.gold == "B"
        assert 0 < get(instance.task).score(instance, None, [-1.0, -0.2, -3.0])["js_similarity"] <= 1


@pytest.mark.parametrize("spec, message", [
    (TASK_YAML.replace("metric: choice", "metric: bleu"), "field 'metric': expected one of choice, contains, number"),
    (TASK_YAML.replace("name: mybench", "name: other"), "field 'name': 'other' is not its directory's name"),
    (TASK_YAML + "colour: red\n", "unknown field(s) colour"),
    (TASK_YAML.replace("name: mybench", "name: xnli"), "'xnli' is a built-in task"),
])
def test_a_bad_task_yaml_is_one_line_and_exit_2(tmp_path, capsys, spec, message):
    name = "xnli" if "name: xnli" in spec else "mybench"
    root = write_own_task(tmp_path / "data", spec=spec, name=name)
    argv = (["tasks", "--data-root", str(root)] if name == "xnli" else  # `xtp tasks` reads every task.yaml
            ["run", "--tasks", name, "--splits", "test", "--data-root", str(root), "--output", str(tmp_path / "out")])
    code = main(argv)
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if ": error:" in line]
    assert code == 2 and message in line and "task.yaml" in line, line


def test_groups_in_an_own_task_stay_together_in_file_order(tmp_path):
    lines = [{"id": f"q{k}", "donor": "d", "recipient": "r", "gold": "1", "group": group}
             for k, group in enumerate(["a", "b", "a", 7, "b"])] + [{"id": "solo", "donor": "d", "recipient": "r",
                                                                     "gold": "2"}]
    root = write_own_task(tmp_path / "data", {"en": lines})
    instances, errors = load_instances("mybench", "en", "test", str(root))
    assert errors == []
    assert [(i.id.rsplit("/", 1)[1], i.extra.get("group")) for i in instances] == [
        ("q0", "a"), ("q2", "a"), ("q1", "b"), ("q4", "b"), ("q3", "7"), ("solo", None)]

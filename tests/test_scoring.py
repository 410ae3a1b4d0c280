"""Scores of hand-checked predictions on real instances; the metrics by name."""
import math

import pytest

from xtp_ray.metrics import (
    get_metric,
    js_similarity,
    last_number,
    match_letter,
    metric_names,
    register_metric,
    squad_em_f1,
)
from xtp_ray.scoring import option_token_ids
from xtp_ray.tasks import get, load_instances


def score(instance, text=None, option_logprobs=None):
    """The instance's task scores the answer (as the actor asks it)."""
    return get(instance.task).score(instance, text, option_logprobs)


def _first(task, lang):
    return load_instances(task, lang, "sample")[0][0]


def test_xnli_reference_matching():
    de = _first("xnli", "de")  # gold "1", label words Nach sich ziehen / Neutral / Widersprechen
    cases = {
        " (1) Entail": True, "1": True, " 1 ": True, "（1）": True,  # full-width brackets normalised
        "Nach sich ziehen": True,  # gold label word in the target language
        "(1) Nach sich ziehen oder (3)": False,  # names another option
        "(1) ... Widersprechen": False,  # another option's label word
        "(2) Neutral": False, "11": False, "": False,
    }
    for text, correct in cases.items():
        assert score(de, text)["correct"] is correct, text


def test_xcopa_and_goqa_matching():
    sw = _first("xcopa", "sw")  # gold "2"
    assert sw.gold == "2"
    assert score(sw, " (2) Mtoto alichafua nepi yake.")["correct"]
    assert not score(sw, "(1) or (2)")["correct"]
    goqa = _first("globalopinionqa", "de")  # gold "B"
    assert score(goqa, " (b) No")["correct"]  # upper-cased like the reference
    assert not score(goqa, "(A) Yes (B) No")["correct"]
    assert match_letter("B", "B")


def test_goqa_scores_as_the_release_does():
    """The release scores GlobalOpinionQA on the raw upper-cased text: full-width
    brackets are NOT normalised (only XNLI's script does that), and naming any other
    capital letter A-Z makes the answer wrong, not only the instance's own options."""
    instances, _ = load_instances("globalopinionqa", "de", "sample")
    checked = 0
    for goqa in instances[:20]:
        gold = goqa.gold
        outside = next(x for x in "ZYXWV" if x not in goqa.options)  # a letter that is no option here
        assert score(goqa, f" ({gold.lower()}) ")["correct"]
        assert score(goqa, gold)["correct"]
        assert not score(goqa, f"（{gold}）")["correct"], "full-width brackets must stay as they are"
        assert not score(goqa, f"({gold}) or maybe ({outside})")["correct"], "any other letter makes it wrong"
        assert not score(goqa, f"({gold}) and ({outside.lower()})")["correct"]
        assert score(goqa, f"({gold}) {outside}")["correct"]  # a bare letter inside text names nothing
        checked += 1
    assert checked == min(20, len(instances)) and checked >= 5
    # XNLI keeps its normalisation: the same full-width answer is correct there
    xnli = _first("xnli", "de")
    assert score(xnli, f"（{xnli.gold}）")["correct"]


def test_goqa_distribution_similarity():
    goqa = _first("globalopinionqa", "de")  # country distribution [0.16, 0.84]
    exact = score(goqa, option_logprobs=[math.log(0.16161616161616163), math.log(0.8383838383838383)])
    assert exact["correct"] and exact["js_similarity"] == pytest.approx(1.0, abs=1e-6)
    opposite = score(goqa, option_logprobs=[0.0, -50.0])
    assert not opposite["correct"] and opposite["js_similarity"] < 0.4
    assert js_similarity([1, 0], [0, 1]) == pytest.approx(0.0, abs=1e-9)


def test_xquad_containment_em_f1():
    de = _first("xquad", "de")  # gold "23-16"
    result = score(de, " Die Broncos gewannen 23-16.")
    assert result["correct"] and result["em"] == 0.0 and 0 < result["f1"] < 1
    assert score(de, "23-16")["em"] == 1.0
    assert not score(de, "16-23")["correct"]
    assert squad_em_f1("the New England Patriots", ["New England Patriots"]) == (1.0, 1.0)


def test_mgsm_final_number():
    sw, _ = load_instances("xnli", "sw", "sample")  # any instance: build an mgsm one by hand
    from dataclasses import replace
    mgsm = replace(sw[0], task="mgsm", gold="70000", options=[], label_words={})
    assert score(mgsm, "He makes 80,000 + 50,000 ... so the profit is 70,000.")["correct"]
    assert not score(mgsm, "The answer is 7000")["correct"]
    assert last_number("no digits") is None


def test_logprob_mode_needs_options():
    xquad = _first("xquad", "de")
    with pytest.raises(ValueError, match="needs generated text"):
        score(xquad, option_logprobs=[0.0])
    xnli = _first("xnli", "sw")
    assert score(xnli, option_logprobs=[-3.0, -1.0, -2.0]) == {"correct": xnli.gold == "2", "prediction": "2",
                                                              "score": float(xnli.gold == "2")}


def test_option_token_ids_leave_out_shared_first_tokens(tokenizer):
    ids = option_token_ids(tokenizer, ["1", "2", "3"])
    assert all(ids) and not set(ids[0]) & set(ids[1])
    paren = tokenizer("(", add_special_tokens=False).input_ids[0]
    assert all(paren not in group for group in ids)


# what each task was scored by, with its per-row metrics, open answers and coarse setting, before the metrics floor
TASK_METRICS = {
    "xnli": ("choice", (), False, ("attn", ("last", 0))),
    "xcopa": ("choice", (), False, ("attn", ("last", 0))),
    "xquad": ("contains", ("em", "f1"), True, ("ffn", (0, 0))),
    "globalopinionqa": ("distribution", ("js_similarity",), False, ("ffn", (0, 0))),
    "mgsm": ("number", (), True, ("ffn", (0, 0))),
    "mkqa": ("mkqa", ("em", "f1"), True, ("ffn", (0, 0))),
    "culturalbench": ("true_false", (), False, ("ffn", (0, 0))),
}


def test_every_task_names_a_registered_metric():
    from xtp_ray.tasks import TASKS
    assert set(TASKS) == set(TASK_METRICS)
    for name, (metric, names, open_answer, coarse) in TASK_METRICS.items():
        task = get(name)
        assert (task.metric, task.metrics, task.open_answer, task.coarse) == (metric, names, open_answer, coarse), name
        assert get_metric(task.metric).name == metric


def test_metrics_by_name():
    assert {"choice", "letter", "contains", "number", "distribution", "mkqa", "true_false"} <= set(metric_names())
    with pytest.raises(ValueError, match="unknown metric 'bleu'; metrics: choice, "):
        get_metric("bleu")
    with pytest.raises(ValueError, match="registered twice"):
        register_metric("choice")(lambda target, text: {"correct": False})
    assert get_metric("choice").text is not None and get_metric("letter").options is None


def test_a_metric_scores_any_instance_like_object():
    """Metrics read fields, not the tasks' Instance type: they import nothing from the tasks."""
    from types import SimpleNamespace
    target = SimpleNamespace(lang="de", gold="B", options=["A", "B"], label_words={},
                             extra={"distribution": [0.2, 0.8]})
    result = get_metric("distribution").score(target, None, [math.log(0.2), math.log(0.8)])
    assert result["correct"] and result["prediction"] == "B" and result["js_similarity"] == pytest.approx(1.0)
    assert get_metric("letter").score(target, " (b)") == {"correct": True, "score": 1.0}
    assert get_metric("choice").score(target, "(A) (B)") == {"correct": False, "score": 0.0}

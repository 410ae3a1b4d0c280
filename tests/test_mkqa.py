"""MKQA: exact match and F1 equal to apple/ml-mkqa's `mkqa_eval.py` on its own test examples, the six real
records in the dataset's format, No Answer golds left out and counted, bad records named, scoring."""
import gzip
import json
import shutil
from pathlib import Path

import pytest

from xtp_ray.metrics import mkqa_em_f1 as em_f1
from xtp_ray.metrics import mkqa_normalize as normalize
from xtp_ray.tasks import get, list_languages, load_instances

SAMPLE = Path(__file__).parent / "data" / "mkqa" / "mkqa_sample6.jsonl.gz"

# apple/ml-mkqa tests/test_mkqa_eval.py, test_compute_mkqa_scores ("en"): (prediction, binary answer, golds,
# expected F1, expected EM). The official scorer reads `binary_answer or prediction`; so do these cases.
OFFICIAL_EN = [
    ("first dummy answer", None, ["first dummy answer", "second dummy answer"], 1.0, 1.0),
    ("alternative answer", None, ["dummy answer one", "alternative answer two"], 0.8, 0.0),
    ("an answer ?? without stopwords", None, ["answer -- without, stopwords!!"], 1.0, 1.0),
    ("", None, [""], 1.0, 1.0),
    ("", None, ["first dummy answer", "second dummy answer"], 0.0, 0.0),
    ("", None, ["yes"], 0.0, 0.0),
    ("wrong answer", "yes", ["yes"], 1.0, 1.0),
    ("distractor answer", "no", ["yes"], 0.0, 0.0),
    ("", "no", [""], 0.0, 0.0),
    ("final prediction", None, ["penultimate", "final prediction"], 1.0, 1.0),
]
# test_compute_mkqa_scores_in_different_languages: (prediction, golds, lang, expected F1, expected EM)
OFFICIAL_LANGS = [
    ("esto es manzana", ["esto es una manzana", "esta es otra manzana"], "es", 1.0, 1.0),
    ("تفاحة", ["التفاحة", "هذه تفاحة"], "ar", 1.0, 1.0),
    ("c'est de la pomme", ["c'est la pomme", "c'est une autre pomme"], "fr", 1.0, 1.0),
    ("ez egy alma", ["ez alma", "ez egy újabb alma"], "hu", 1.0, 1.0),
    ("这个一个苹果", ["这是还是苹果", "这是另一个苹果"], "zh_cn", 0.7692307692307692, 0),
    ("នេះគឺជាផ្លែប៉ោម", ["នេះគឺជាផ្លែប៉ោមមួយទៀត"], "km", 0.8333333333333333, 0),
]


@pytest.mark.parametrize("prediction, binary, golds, f1, em", OFFICIAL_EN)
def test_em_f1_equal_the_official_script_in_english(prediction, binary, golds, f1, em):
    assert em_f1(binary or prediction, golds, "en") == (em, f1)


@pytest.mark.parametrize("prediction, golds, lang, f1, em", OFFICIAL_LANGS)
def test_em_f1_equal_the_official_script_per_language(prediction, golds, lang, f1, em):
    assert em_f1(prediction, golds, lang) == (em, f1)
    if lang == "zh_cn":
        assert em_f1(prediction, golds, "zh") == (em, f1)  # our `zh` is MKQA's zh_cn


def _root(tmp_path, records=None) -> str:
    (tmp_path / "mkqa").mkdir(parents=True)
    if records is None:
        shutil.copy(SAMPLE, tmp_path / "mkqa" / "mkqa.jsonl.gz")
    else:
        (tmp_path / "mkqa" / "mkqa.jsonl").write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n"
                                                              for r in records))
    return str(tmp_path)


def test_the_six_real_records_in_the_datasets_own_format(tmp_path):
    root = _root(tmp_path)
    languages = list_languages("mkqa", "train", root)
    assert len(languages) == 26 and "zh" in languages and "zh_cn" not in languages and "zh_hk" in languages
    records = [json.loads(line) for line in gzip.open(SAMPLE, "rt", encoding="utf-8")]
    for lang, theirs in (("de", "de"), ("zh", "zh_cn"), ("en", "en")):
        instances, left_out = load_instances("mkqa", lang, "train", root)
        errors = [e for e in left_out if not e.note]
        [note] = [e for e in left_out if e.note]
        assert errors == []
        answerable = [r for r in records if any(a["type"] not in ("unanswerable", "long_answer") or a.get("aliases")
                                                for a in r["answers"][theirs])]
        assert len(instances) == len(answerable) and f"{6 - len(answerable)} record(s)" in note.message
        for inst, record in zip(instances, answerable):
            assert inst.id == f"mkqa/train/{lang}/{record['example_id']}" and inst.direction == f"en->{lang}"
            assert record["query"] in inst.donor and record["queries"][theirs] in inst.recipient
            assert "Context:" not in inst.recipient and inst.recipient.startswith("Human: ")
            golds = inst.extra["answers"]
            assert golds[0] == inst.gold and all(isinstance(g, str) and g for g in golds)
            if lang == "en":
                assert inst.donor == inst.recipient
    assert get("mkqa").family == "generation" and get("mkqa").coarse == ("ffn", (0, 0))


def test_no_answer_golds_are_left_out_and_bad_records_named(tmp_path):
    good = {"example_id": 1, "query": "who wrote hamlet",
            "queries": {"en": "who wrote hamlet", "de": "wer schrieb hamlet"},
            "answers": {"en": [{"type": "entity", "text": "William Shakespeare", "aliases": ["Shakespeare"]}],
                        "de": [{"type": "entity", "text": "William Shakespeare", "aliases": ["Shakespeare"]}]}}
    unanswerable = {**good, "example_id": 2, "answers": {"en": [{"type": "unanswerable", "text": None}],
                                                         "de": [{"type": "unanswerable", "text": None}]}}
    long_answer = {**good, "example_id": 3, "answers": {"en": [{"type": "long_answer", "text": None}],
                                                        "de": [{"type": "long_answer", "text": None}]}}
    no_query = {**good, "example_id": 4, "queries": {"en": "who"}}
    bad_answers = {**good, "example_id": 5, "answers": {"en": [], "de": "Shakespeare"}}
    root = _root(tmp_path, [good, unanswerable, long_answer, no_query, bad_answers, "{not json\n"])
    instances, left_out = load_instances("mkqa", "de", "train", root)
    assert [i.id for i in instances] == ["mkqa/train/de/1"]
    notes = [str(e) for e in left_out if e.note]
    errors = [str(e) for e in left_out if not e.note]
    assert notes == [f"{root}/mkqa/mkqa.jsonl: field 'answers.de': 2 record(s) whose gold in de is No Answer left "
                     "out (counted, not an error)"]
    assert errors == [f"{root}/mkqa/mkqa.jsonl:6: bad JSON (Expecting property name enclosed in double quotes)",
                      f"{root}/mkqa/mkqa.jsonl:4: field 'queries.de': missing: this record has no question in the "
                      "language",
                      f"{root}/mkqa/mkqa.jsonl:5: field 'answers.de': expected a non-empty list of answers"]


def test_correct_is_a_normalised_gold_in_the_first_line(tmp_path):
    root = _root(tmp_path, [{"example_id": 1, "query": "who wrote hamlet", "queries": {"de": "wer schrieb hamlet"},
                             "answers": {"de": [{"type": "entity", "text": "William Shakespeare",
                                                 "aliases": ["Shakespeare"]}]}}])
    [inst] = load_instances("mkqa", "de", "train", root)[0]
    task = get(inst.task)
    assert task.score(inst, " Das war shakespeare.")["correct"]  # case and punctuation as MKQA normalises them
    assert not task.score(inst, " Goethe\nShakespeare")["correct"]  # only the first line counts
    result = task.score(inst, " Shakespeare")
    assert (result["em"], result["f1"]) == (1.0, 1.0) and result["score"] == 1.0
    assert normalize("Der Shakespeare!", "de") == "shakespeare"

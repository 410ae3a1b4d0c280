"""CulturalBench-Hard: rows in the dataset's format (CSV, JSON) with user-supplied translations, four rows a
question; a question is right only when all four are, held against a plain per-question definition;
bad files get one line each and the rest runs."""
import csv
import json
from collections import defaultdict

import pytest

from xtp_ray.results.aggregation import aggregate_merged
from xtp_ray.results.partials import Merged, shard_partials
from xtp_ray.results.rows import aggregate_frame
from xtp_ray.results.synthetic import synthetic_shard
from xtp_ray.tasks import get, list_languages, load_instances

FIELDS = ["data_idx", "question_idx", "prompt_question", "prompt_option", "answer", "country"]


def culturalbench_rows(questions: int = 3) -> list[dict]:
    rows = []
    for q in range(questions):
        for k in range(4):
            rows.append({"data_idx": 4 * q + k, "question_idx": q,
                         "prompt_question": f"In country {q}, what do people eat for breakfast?",
                         "prompt_option": f"dish {k}", "answer": "True" if k == q % 4 else "False",
                         "country": f"Country {q}"})
    return rows


def write_culturalbench(root, rows=None, translations=("de",), fmt="csv", drop_translation=None):
    """The dataset's rows under <root>/culturalbench, and a translation per language (drop_translation:
    a data_idx left out of them)."""
    rows = culturalbench_rows() if rows is None else rows
    directory = root / "culturalbench"
    (directory / "translated").mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        with open(directory / "CulturalBench-Hard.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    else:
        (directory / "CulturalBench-Hard.json").write_text(json.dumps(rows))
    for lang in translations:
        (directory / "translated" / f"{lang}.jsonl").write_text("".join(
            json.dumps({"data_idx": r["data_idx"],
                        "prompt": f"[{lang}] Frage: {r['prompt_question']} / {r['prompt_option']}"})
            + "\n" for r in rows if r.get("data_idx") != drop_translation))
    return root


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_rows_in_the_datasets_format_with_translations(tmp_path, fmt):
    root = str(write_culturalbench(tmp_path, fmt=fmt))
    assert list_languages("culturalbench", "test", root) == ["de", "en"]
    en, errors = load_instances("culturalbench", "en", "test", root)
    assert errors == [] and len(en) == 12
    first = en[0]
    assert first.recipient == ("Question: In country 0, what do people eat for breakfast?\nAnswer: dish 0\n"
                               "Is this answer true or false for this question? You must choose either True or False.")
    assert first.donor == first.recipient and first.options == ["True", "False"] and first.gold == "True"
    assert first.extra["group"] == "0" and first.id == "culturalbench/test/en/0" and first.direction == "en->en"
    de, errors = load_instances("culturalbench", "de", "test", root)
    assert errors == [] and de[5].donor.startswith("[de] Frage") and de[5].recipient == en[5].recipient
    assert de[5].direction == "de->en" and de[5].lang == "de"
    task = get(first.task)
    assert task.score(first, " True, because ...")["correct"] and not task.score(first, " False")["correct"]
    assert task.score(first, None, [-0.2, -1.5])["correct"]


def test_bad_rows_a_short_question_and_a_missing_translation_get_one_line_each(tmp_path):
    rows = culturalbench_rows(4)
    del rows[1]["answer"]  # question 0 loses a row to a missing field: left out whole
    rows = [r for r in rows if r["data_idx"] != 6]  # question 1 has three rows
    root = str(write_culturalbench(tmp_path, rows, fmt="json", drop_translation=9))  # question 2 untranslated
    en, errors = load_instances("culturalbench", "en", "test", root)
    file = f"{root}/culturalbench/CulturalBench-Hard.json"
    assert [str(e) for e in errors] == [
        f"{file}:2: field 'answer': None is not True or False",
        f"{file}:1: field 'question_idx': question 0 has 3 row(s), not 4: left out whole (it is scored as a whole)",
        f"{file}:5: field 'question_idx': question 1 has 3 row(s), not 4: left out whole (it is scored as a whole)"]
    assert sorted({i.extra["group"] for i in en}) == ["2", "3"]
    de, errors = load_instances("culturalbench", "de", "test", root)
    assert str(errors[-1]) == (f"{root}/culturalbench/translated/de.jsonl: field 'data_idx': no translation of "
                               "row(s) 9 of question 2: the question is left out in de")
    assert sorted({i.extra["group"] for i in de}) == ["3"]


def test_questions_count_whole_against_a_plain_per_question_definition():
    layers = 3
    tables = [synthetic_shard("culturalbench", "test", lang, range(k, k + 16), layers, seed=s, group_size=4)
              for s, (lang, k) in enumerate((("en", 0), ("en", 16), ("de", 0)))]
    merged = Merged()
    for s, table in enumerate(tables):
        merged.add(shard_partials(table, f"s{s}"), f"s{s}")
    report = aggregate_merged(merged)
    import pyarrow as pa

    assert aggregate_frame(pa.concat_tables(tables).to_pandas()) == report  # the pandas definition agrees
    rows = [r for t in tables for r in t.to_pylist()]
    for lang in ("en", "de"):
        mine = [r for r in rows if r["lang"] == lang]
        by_question = defaultdict(lambda: defaultdict(list))  # question -> cell -> the rows' correct
        for r in mine:
            by_question[r["group"]][(r["source_layer"], r["target_layer"])].append(r["correct"])
        assert all(len(v) == 4 for cells in by_question.values() for v in cells.values())
        right = {q: {cell: all(v) for cell, v in cells.items()} for q, cells in by_question.items()}
        n = len(right)
        got = report["tables"]["culturalbench/test/ffn"]["by_lang"][lang]
        assert got["instances"] == n == (8 if lang == "en" else 4)
        assert got["vanilla_accuracy"] == pytest.approx(sum(r[(None, None)] for r in right.values()) / n)
        # upper bound: one cell must get the whole question right
        assert got["upper_bound"] == pytest.approx(
            sum(any(ok for cell, ok in r.items() if cell != (None, None)) for r in right.values()) / n)
        best = max(sum(r[(i, j)] for r in right.values()) / n for i in range(layers) for j in range(layers))
        assert got["best_cell"]["accuracy"] == pytest.approx(best)
        assert got["row_instances"] == 4 * n  # the rows' own figure beside the questions'
        vanilla_rows = [r["correct"] for r in mine if r["source_layer"] is None]
        assert got["row_vanilla_accuracy"] == pytest.approx(sum(vanilla_rows) / len(vanilla_rows))
        assert got["vanilla_accuracy"] < got["row_vanilla_accuracy"]  # four rows right at once is rarer

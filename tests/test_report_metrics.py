"""Task metrics beside accuracy (EM, F1, 1 - JS): vanilla, best cell (chosen by the metric) and upper bound
(per instance the max over searched cells), worked out by hand, equal in the partials and the pandas
definition, and shown in report.md / report.html / report.json / results.json; Wilson intervals on every
accuracy; a grouped task's questions and rows side by side; the offline-scaling table in the paper's shape;
chart axes from 0 and the best cell marked only where it beats vanilla."""
import json

import pandas as pd
import pyarrow as pa
import pytest

from xtp_ray.job.config import RunConfig
from xtp_ray.job.shards import write_shard
from xtp_ray.results.aggregation import aggregate_run
from xtp_ray.results.partials import Merged, shard_partials, summarise
from xtp_ray.results.report import render_figures, render_html, render_markdown
from xtp_ray.results.rows import aggregate_frame, summarise_group
from xtp_ray.results.synthetic import synthetic_shard


def _xquad_rows():
    """Two instances of xquad/test/de, cells (0, 0), (0, 1), (1, 0) (of 2 layers); metrics by hand."""
    rows = []

    def row(instance, cell, correct, **metrics):
        source, target = cell if cell else (None, None)
        rows.append({"task": "xquad", "split": "test", "lang": "de", "instance_id": f"xquad/test/de/{instance}",
                     "module": "ffn", "source_layer": source, "target_layer": target, "correct": correct,
                     "metrics": json.dumps(metrics), "num_layers": 2})

    row(0, None, False, em=0.0, f1=0.25)
    row(0, (0, 0), True, em=1.0, f1=1.0)
    row(0, (0, 1), False, em=0.0, f1=0.5)
    row(0, (1, 0), False)  # no metric on this row: left out of the metric's figures, still counted for accuracy
    row(1, None, True, em=0.0, f1=0.75)
    row(1, (0, 0), False, em=0.0, f1=0.0)
    row(1, (0, 1), True, em=0.0, f1=0.8)
    row(1, (1, 0), True, em=1.0, f1=0.9)
    frame = pd.DataFrame(rows)
    frame["source_layer"] = frame["source_layer"].astype("Int64")
    frame["target_layer"] = frame["target_layer"].astype("Int64")
    return frame


def test_metrics_by_hand_and_the_partials_agree():
    frame = _xquad_rows()
    plain = summarise_group(frame)
    assert plain["vanilla_metrics"] == {"em": 0.0, "f1": pytest.approx(0.5)}
    # F1 per cell: (0,0) (1.0 + 0.0)/2 = 0.5; (0,1) (0.5 + 0.8)/2 = 0.65; (1,0) 0.9 (one row has it): the best
    assert plain["best_cell_metrics"]["f1"] == {"source_layer": 1, "target_layer": 0, "value": pytest.approx(0.9)}
    # EM per cell: (0,0) 0.5, (0,1) 0.0, (1,0) 1.0 -> (1, 0); chosen by EM, not by accuracy ((0, 1) and (1, 0) tie at
    # 1/2 accuracy with (0, 0): the accuracy's best cell is (0, 0))
    assert plain["best_cell_metrics"]["em"] == {"source_layer": 1, "target_layer": 0, "value": 1.0}
    assert (plain["best_cell"]["source_layer"], plain["best_cell"]["target_layer"]) == (0, 0)
    # upper bound: instance 0 max F1 1.0, instance 1 max 0.9 -> 0.95; EM: 1 and 1 -> 1.0
    assert plain["upper_bound_metrics"] == {"em": 1.0, "f1": pytest.approx(0.95)}
    # the same numbers from the shard's partials, bit for bit (one shard, and the rows split in two shards)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    one = Merged()
    one.add(shard_partials(table), "a")
    two = Merged()
    two.add(shard_partials(table.slice(0, 4)), "a")
    two.add(shard_partials(table.slice(4)), "b")
    for merged in (one, two):
        got = summarise(merged.groups["xquad/test/ffn/de"])
        assert {k: got[k] for k in ("vanilla_metrics", "best_cell_metrics", "upper_bound_metrics")} == \
            {k: plain[k] for k in ("vanilla_metrics", "best_cell_metrics", "upper_bound_metrics")}


def test_report_shows_each_metric_for_vanilla_best_cell_and_upper_bound():
    report = {"run_id": "m", "run": {"model": "tiny:LlamaForCausalLM:2", "model_revision": "tiny-seed0",
                                     "engine": "hf", "dtype": "float32", "scoring": "generate",
                                     "max_new_tokens": 20, "data_root": None},
              **aggregate_frame(_xquad_rows())}
    figures = render_figures(report)
    report["figures"] = sorted(figures)
    markdown = render_markdown(report)
    assert ("model: tiny:LlamaForCausalLM:2 · revision: tiny-seed0 · engine: hf · dtype: float32 · scoring: "
            "generate \\(greedy, 20 new tokens\\) · data root: the bundled sample splits") in markdown
    assert ("| lang | EM vanilla | EM best cell | EM best (i, j) | EM upper bound | F1 vanilla | F1 best cell"
            in markdown)
    assert "| de | 0.0 | 100.0 | (1, 0) | 100.0 | 50.0 | 90.0 | (1, 0) | 95.0 |" in markdown
    # accuracy: vanilla 1 of 2 -> Wilson [9.5, 90.5]; upper bound 2 of 2 -> [34.2, 100]; best cell (0,0) 1 of 2
    assert "| de | 2 | 50.0 [9.5, 90.5] | 100.0 [34.2, 100.0] | 50.0 [9.5, 90.5] | (0, 0) |" in markdown
    page = render_html(report, figures)
    assert "<td>de</td><td>0.0</td><td>100.0</td><td>(1, 0)</td><td>100.0</td><td>50.0</td><td>90.0</td>" in page
    assert "chosen by the metric itself" in page and "the instance&#x27;s best cell" in page


def _metric_run(tmp_path):
    """A run of MKQA and XQuAD shards (two languages each), committed through the job's own commit."""
    config = RunConfig(output=str(tmp_path / "out"), run_id="gen", tasks=["xquad", "mkqa"], scoring="generate")
    plan = [("xquad", "test", "de", range(0, 5)), ("xquad", "test", "zh", range(0, 4)),
            ("mkqa", "train", "de", range(0, 6)), ("mkqa", "train", "zh", range(0, 3)),
            ("mkqa", "train", "zh", range(3, 7))]
    for k, (task, split, lang, instances) in enumerate(plan):
        table = synthetic_shard(task, split, lang, instances, 3, seed=k, run_id="gen",
                                config=json.dumps({"digest": config.digest()}))
        write_shard(config, f"{task}-{split}-{lang}-{instances.start:05d}", table, [])
    (tmp_path / "out" / "gen" / "manifest.json").write_text(json.dumps({"config": config.to_json(),
                                                                         "model_revision": "r0"}))
    return config


def _direct(rows, name):
    """Vanilla, best cell (by the metric) and upper bound of one metric, straight from the rows."""
    vanilla = [json.loads(r["metrics"])[name] for r in rows if r["source_layer"] is None]
    cells, best_of = {}, {}
    for r in rows:
        if r["source_layer"] is not None:
            value = json.loads(r["metrics"])[name]
            cells.setdefault((r["source_layer"], r["target_layer"]), []).append(value)
            best_of[r["instance_id"]] = max(best_of.get(r["instance_id"], value), value)
    means = {cell: sum(v) / len(v) for cell, v in cells.items()}
    top = max(means.values())
    return (sum(vanilla) / len(vanilla), min(c for c, v in means.items() if v == top), top,
            sum(best_of.values()) / len(best_of))


def test_an_mkqa_and_xquad_run_reports_em_and_f1_everywhere(tmp_path):
    config = _metric_run(tmp_path)
    report = aggregate_run(config.output, "gen")
    out = tmp_path / "out" / "gen" / "report"
    markdown = (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())
    stored = json.loads((out / "report.json").read_text())
    page = (out / "report.html").read_text()
    rows = pa.concat_tables([pa.parquet.read_table(p) for p in sorted((tmp_path / "out" / "gen" / "candidates")
                                                                       .glob("*.parquet"))]).to_pylist()
    assert "model: tiny:LlamaForCausalLM:4 · revision: r0 · engine: hf" in markdown
    for task, split in (("xquad", "test"), ("mkqa", "train")):
        table = stored["tables"][f"{task}/{split}/ffn"]
        for lang in ("de", "zh"):
            mine = [r for r in rows if r["task"] == task and r["lang"] == lang]
            g = table["by_lang"][lang]
            line = f"| {lang} |"
            for name, label in (("em", "exact_match"), ("f1", "f1")):
                vanilla, cell, best, upper = _direct(mine, name)
                assert g["vanilla_metrics"][name] == pytest.approx(vanilla)
                assert g["best_cell_metrics"][name]["value"] == pytest.approx(best)
                at = g["best_cell_metrics"][name]
                assert (at["source_layer"], at["target_layer"]) == cell
                assert g["upper_bound_metrics"][name] == pytest.approx(upper)
                entry = results["results"][f"xtp_{task}_{split}_ffn_{lang}"]
                assert entry[f"{label},none"] == pytest.approx(vanilla)  # lm-eval's names, for both tasks
                assert entry[f"{label}_best_cell,none"] == pytest.approx(best)
                assert entry[f"{label}_upper_bound,none"] == pytest.approx(upper)
                line += f" {100 * vanilla:.1f} | {100 * best:.1f} | {cell} | {100 * upper:.1f} |"
            assert line in markdown, line  # EM then F1: vanilla, best cell, its (i, j), upper bound
            assert "em,none" not in entry
            ci = g["intervals"]
            assert ci["vanilla"][0] <= g["vanilla_accuracy"] <= ci["vanilla"][1]
            assert ci["upper_bound"][0] <= g["upper_bound"] <= ci["upper_bound"][1]
            assert ci["best_cell"][0] <= g["best_cell"]["accuracy"] <= ci["best_cell"][1]
            assert (f"| {lang} | {g['instances']} | {100 * g['vanilla_accuracy']:.1f} [{100 * ci['vanilla'][0]:.1f}, "
                    f"{100 * ci['vanilla'][1]:.1f}] |") in markdown
        assert set(table["metrics"]) == {"em", "f1"}  # mean ± std across languages too
    assert page.count("F1 upper bound") == 2 and report["run"]["model_revision"] == "r0"


def test_a_grouped_task_shows_questions_and_rows_side_by_side():
    table = synthetic_shard("culturalbench", "test", "de", range(0, 12), 2, group_size=4, seed=3)
    report = {"run_id": "c", **aggregate_frame(table.to_pandas())}
    g = report["tables"]["culturalbench/test/ffn"]["by_lang"]["de"]
    report["figures"] = []
    markdown = render_markdown(report)
    assert "3 questions (12 rows), 1 language." in markdown
    assert ("| lang | questions | rows | vanilla (questions) | vanilla (rows) | upper bound (questions) | "
            "upper bound (rows) | best cell (questions) | best cell (rows) | best (i, j) (questions) | "
            "best (i, j) (rows) |") in markdown
    # the rows' own figures, each row scored alone, straight from the rows
    rows = table.to_pylist()
    vanilla = [r["correct"] for r in rows if r["source_layer"] is None]
    solved = {r["instance_id"] for r in rows if r["source_layer"] is not None and r["correct"]}
    per_cell = {}
    for r in rows:
        if r["source_layer"] is not None:
            per_cell.setdefault((r["source_layer"], r["target_layer"]), []).append(r["correct"])
    top = max(sum(v) / len(v) for v in per_cell.values())
    best = min(c for c, v in per_cell.items() if sum(v) / len(v) == top)
    assert g["row_vanilla_accuracy"] == sum(vanilla) / 12 and g["row_upper_bound"] == len(solved) / 12
    assert (g["row_best_cell"]["source_layer"], g["row_best_cell"]["target_layer"], g["row_best_cell"]["accuracy"]) == \
        (*best, top)
    ci = g["intervals"]
    cells = [f"{100 * g['vanilla_accuracy']:.1f} [{100 * ci['vanilla'][0]:.1f}, {100 * ci['vanilla'][1]:.1f}]",
             f"{100 * g['row_vanilla_accuracy']:.1f} [{100 * ci['row_vanilla'][0]:.1f}, "
             f"{100 * ci['row_vanilla'][1]:.1f}]",
             f"{100 * g['upper_bound']:.1f} [{100 * ci['upper_bound'][0]:.1f}, {100 * ci['upper_bound'][1]:.1f}]",
             f"{100 * g['row_upper_bound']:.1f} [{100 * ci['row_upper_bound'][0]:.1f}, "
             f"{100 * ci['row_upper_bound'][1]:.1f}]"]
    assert "| de | 3 | 12 | " + " | ".join(cells) + " |" in markdown


def test_offline_scaling_html_has_one_row_per_task_type_and_the_languages_folded():
    shards = [synthetic_shard(task, split, lang, range(0, 4), 3, cells=[(0, 0)], seed=k)
              for k, (task, split, lang) in enumerate([("xquad", "unseen", "de"), ("xquad", "unseen", "zh"),
                                                       ("mkqa", "train", "de"), ("mkqa", "train", "zh"),
                                                       ("globalopinionqa", "unseen", "de")])]
    report = {"run_id": "s", **aggregate_frame(pa.concat_tables(shards).to_pandas())}
    page = render_html(report, {})
    section = page[page.index("<h2>Offline scaling"):]
    main, details = section.split("<details>", 1)
    assert main.count("<tr>") == 1 + 2  # header, generation, culture
    assert ("<td>generation</td><td>ffn</td><td>(first, first)</td><td>xquad<br><small>unseen, 2 langs</small></td>"
            in main)
    assert "<td>mkqa<br><small>train, 2 langs</small></td>" in main  # OOD beside ID on the same row
    assert main.count("<td>") == 2 * 9 and main.split("<tbody>")[1].count(" ± ") == 2 * 2 + 2  # culture: no OOD
    assert details.count("<tr>") == 1 + 5  # per language, under it


def test_charts_start_at_zero_and_mark_the_best_cell_only_where_it_beats_vanilla(monkeypatch):
    from xtp_ray.results import report as report_module

    frame = _xquad_rows()
    frame["correct"] = False  # nothing right anywhere: no cell beats vanilla
    report = {"run_id": "z", **aggregate_frame(frame)}
    limits, marked = [], []
    real_png = report_module.png_bytes

    def keep(figure):  # what each figure shows: accuracy axes' limits, where "best" is marked on a heatmap
        limits.extend(ax.get_ylim() for ax in figure.axes if ax.get_ylabel() == "accuracy %")
        marked.extend(text.get_position() for ax in figure.axes for text in ax.texts if text.get_text() == "best")
        return real_png(figure)

    monkeypatch.setattr(report_module, "png_bytes", keep)
    figures = report_module.render_figures(report)
    assert "heatmaps/xquad-test-ffn-de.png" in figures
    assert len(limits) == 2 and all(low == 0 and high > 1 for low, high in limits)  # overview, marginals
    assert marked == []  # all-zero: no cell beats vanilla, nothing marked
    frame.loc[(frame["instance_id"].str.endswith("/1")) & (frame["source_layer"] == 0) & (frame["target_layer"] == 1),
              "correct"] = True
    report_module.render_figures({"run_id": "z", **aggregate_frame(frame)})
    assert marked == [(1, 0)]  # (source 0, target 1): target on x, source on y

"""Shards cut by predicted cost: nothing lost or duplicated, groups whole, costliest first, the last
wave finer; the schedule benchmark within its goal; the dry run's figures."""
import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from xtp_ray.job.schedule import cut_by_cost, cut_by_size, lower_bound, makespan
from xtp_ray.tasks import Instance

ROOT = Path(__file__).resolve().parents[1]
LLAMA_7B = str(ROOT / "tests" / "data" / "models" / "Llama-2-7b-chat-hf")
LLAMA_70B = str(ROOT / "tests" / "data" / "models" / "Llama-2-70b-chat-hf")


def _slices(seed: int, grouped: bool = False):
    """(task, split, lang) -> instances, with costs from 0.1 to 10 (as prompt lengths vary); `grouped`:
    runs of four instances share a group (CulturalBench-style questions)."""
    rng = random.Random(seed)
    slices, costs = {}, {}
    for task in ("xnli", "xquad"):
        for lang in ("en", "sw", "zh")[:rng.randint(1, 3)]:
            n = rng.randint(1, 60) * (4 if grouped else 1)
            slices[(task, "sample", lang)] = [
                Instance(f"{task}/sample/{lang}/{k}", task, "sample", lang, "en->" + lang, "d", "r", "1",
                         extra={"group": f"q{k // 4}"} if grouped else {}) for k in range(n)]
            costs[(task, "sample", lang)] = [rng.uniform(0.1, 10) for _ in range(n)]
    return slices, costs


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("actors, shard_size, batch", [(1, 64, 4), (3, 5, 2), (8, 50, 8), (32, 7, 1), (128, 64, 8)])
def test_no_instance_is_lost_or_duplicated_and_shards_hold_one_language(seed, actors, shard_size, batch):
    slices, costs = _slices(seed)
    every = Counter(i.id for instances in slices.values() for i in instances)
    for shards, shard_costs in (cut_by_cost(slices, costs, actors, shard_size, batch),
                                cut_by_size(slices, shard_size, costs)):
        assert Counter(i.id for instances in shards.values() for i in instances) == every
        assert all(0 < len(instances) <= shard_size for instances in shards.values())
        for name, instances in shards.items():
            assert name.startswith(f"{instances[0].task}-sample-{instances[0].lang}-")
            assert len({(i.task, i.lang) for i in instances}) == 1
        assert sum(shard_costs.values()) == pytest.approx(sum(sum(c) for c in costs.values()))


@pytest.mark.parametrize("seed", range(4))
def test_groups_are_never_split(seed):
    slices, costs = _slices(seed, grouped=True)
    for actors in (2, 16, 128):
        for shards, _ in (cut_by_cost(slices, costs, actors, shard_size=6, batch_size=1),
                          cut_by_size(slices, 6, costs)):
            where = {}
            for name, instances in shards.items():
                for i in instances:
                    assert where.setdefault((i.task, i.lang, i.extra["group"]), name) == name, i.id


def test_costliest_first_and_the_last_wave_finer():
    slices, costs = _slices(1)
    actors = 8
    shards, shard_costs = cut_by_cost(slices, costs, actors, shard_size=64)
    ordered = list(shard_costs.values())
    assert ordered == sorted(ordered, reverse=True)  # the dispatch order
    total = sum(ordered)
    target = total / (actors * 4)
    # most work sits in shards of about the target, the last wave in parts of about a quarter of it
    assert max(ordered) <= target + 10  # one instance may overshoot by its own cost
    assert max(ordered[-actors:]) <= target / 4 + 10
    # and the schedule is near its bound
    every = [c for key in slices for c in costs[key]]
    assert makespan(ordered, actors) / lower_bound(every, actors) < 1.1


def test_the_schedule_bench_meets_its_goal_on_both_job_configs():
    done = subprocess.run([sys.executable, "-m", "xtp_ray.cli", "bench", "--suite", "schedule"], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if " actors: makespan/lower bound " in line]
    assert len(lines) == 6  # two configs x 8, 32, 128 actors
    for line in lines:
        ratio, today = line.split("makespan/lower bound ")[1].split(" (today's order ")
        assert float(ratio) <= 1.10, line
        assert float(today.split(")")[0]) >= 1.0, line
    # the case the issue names: the paper config's 63 shards leave most of 128 actors idle
    [paper_128] = [line for line in lines if line.startswith("schedule: paper.yaml on 128 actors")]
    assert float(paper_128.split("(today's order ")[1].split(")")[0]) > 2


def test_the_dry_run_prices_the_paper_config_without_running_anything(tmp_path):
    argv = [sys.executable, "jobs/grid_search.py", "--config", "jobs/paper.yaml", "--model", LLAMA_7B,
            "--data-root", str(ROOT / "xtp_ray" / "data"), "--output", str(tmp_path / "out"), "--dry-run", "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": "",
                               "PYTHONPATH": str(ROOT)})  # this checkout's xtp_ray, not an installed one
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    # the bundled sample splits: 50 per (task, language), 1,024 cells + vanilla each, by cost for 32 actors
    assert result["instances"] == 3150 and result["cells"] == result["rows"] == 3150 * 1025
    assert result["shards"] > 63 and result["sharding"] == "by cost for 32 actors, costliest first"
    assert result["new_tokens_at_most"] == 3150 * 1025 * 20
    # the H200 calibration: 0.86 s per instance of 130-token prompts; these prompts are longer on average
    assert 3150 * 0.8 < result["predicted_gpu_s"] < 3150 * 2
    assert result["predicted_gpu_s"] / 32 <= result["predicted_wall_s"] < result["predicted_gpu_s"] / 32 * 1.1
    assert "NVIDIA H200" in result["prediction_basis"] and result["feasibility"].startswith("not checked")
    assert not (tmp_path / "out").exists()  # nothing written

    table = subprocess.run(argv[:-1], capture_output=True, text=True, timeout=300, cwd=ROOT,
                           env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    assert table.returncode == 0, table.stderr[-3000:]
    for label in ("shards", "instances", "candidate rows", "new tokens", "feasibility", "memory fit",
                  "predicted GPU time", "predicted wall time", "prediction basis"):
        assert f"  {label} " in table.stdout, table.stdout


def test_the_dry_run_shows_a_refused_fit_and_exits_2(tmp_path, capsys):
    from xtp_ray.cli import main

    code = main(["run", "--config", str(ROOT / "jobs" / "llama70b.yaml"), "--model",
                 str(ROOT / "tests" / "data" / "models" / "Llama-2-70b-chat-hf"), "--data-root",
                 str(ROOT / "xtp_ray" / "data"), "--splits", "sample", "--num-gpus-per-actor", "1", "--gpu-memory-gb",
                 "80", "--output", str(tmp_path / "out"), "--dry-run", "--json"])
    result = json.loads(capsys.readouterr().out)
    fit = result["memory_fit"]
    assert code == 2 and fit["verdict"] == "refused" and "68.98B parameters" in fit["line"], fit
    assert fit["gpu_memory_gb"] == 80 and fit["usable_share"] == 0.9 and fit["need_per_gpu_gb"] > 71
    assert fit["remedy"].startswith("raise num_gpus_per_actor")


def _dry_run(capsys, *flags):
    from xtp_ray.cli import main

    code = main(["run", "--dry-run", "--data-root", str(ROOT / "xtp_ray" / "data"), *flags])
    out, err = capsys.readouterr()
    assert out, err
    return code, out


def test_the_dry_runs_gpu_seconds_count_every_gpu_an_actor_holds(tmp_path, capsys):
    flags = ["--config", str(ROOT / "jobs" / "llama70b.yaml"), "--model", LLAMA_70B, "--splits", "sample",
             "--data-root", str(ROOT / "xtp_ray" / "data"), "--gpu-memory-gb", "80", "--output", str(tmp_path / "out")]
    code, out = _dry_run(capsys, *flags, "--json")
    result = json.loads(out)
    assert code == 0 and result["memory_fit"]["verdict"] == "fits" and result["gpus_per_actor"] == 8
    from xtp_ray.job.config import load_config
    from xtp_ray.job.plan import plan
    from xtp_ray.job.schedule import makespan

    planned = plan(load_config(_args(*flags)))
    busy = sum(planned.costs.values())  # the two actors' busy time
    assert result["predicted_actor_s"] == pytest.approx(busy)
    assert result["predicted_gpu_s"] == pytest.approx(8 * busy)  # 8 GPUs per actor, every one counted
    assert result["predicted_wall_s"] == pytest.approx(makespan(list(planned.costs.values()), 2))
    assert result["predicted_gpu_s"] <= 16 * result["predicted_wall_s"] < result["predicted_gpu_s"] * 1.1
    code, table = _dry_run(capsys, *flags)
    [line] = [line for line in table.splitlines() if "predicted GPU time" in line]
    assert f"{8 * busy:,.0f} GPU-s (8 GPU(s) per actor x {busy:,.1f} s of actor time" in line, line


def _args(*flags):
    import argparse

    from xtp_ray.job.config import add_flags

    parser = argparse.ArgumentParser()
    add_flags(parser)
    return parser.parse_args(list(flags))


def test_rows_left_out_are_listed_and_do_not_fail_a_plan_that_fits(tmp_path, capsys):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(ROOT / "xtp_ray" / "data" / "xtransplant_release" / "XCOPA", root / "XCOPA")
    sw = root / "XCOPA" / "XCOPA_sample" / "split" / "sw.json"
    lines = sw.read_text().splitlines()
    sw.write_text("\n".join(lines[:2] + ["{not a json string"] + lines[3:]) + "\n")
    flags = ["--config", str(ROOT / "jobs" / "llama70b.yaml"), "--model", LLAMA_70B, "--tasks", "xcopa",
             "--splits", "sample", "--gpu-memory-gb", "80", "--output", str(tmp_path / "out"), "--dry-run"]
    from xtp_ray.cli import main

    code = main(["run", "--data-root", str(root), *flags])
    out = capsys.readouterr().out
    assert code == 0, out
    [left_out] = [line for line in out.splitlines() if line.startswith("  left out")]
    assert "1 row (1 malformed row; listed below; --json: left_out)" in left_out  # rows, not lines
    [listed] = [line for line in out.splitlines() if line.startswith("left out: ")]
    assert f"{sw}:3" in listed, listed
    assert "the plan can run (exit 0); 1 row left out, listed below" in out
    code = main(["run", "--data-root", str(root), *flags, "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and len(result["left_out"]) == 1 and result["memory_fit"]["verdict"] == "fits"


@pytest.mark.parametrize("name, total, active", [("Mixtral-8x7B-shape", 46_702_792_704, 12_879_925_248),
                                                 ("gpt-oss-120b-mxfp4-shape", 116_829_156_672, 5_711_982_912),
                                                 ("DeepSeek-V3-fp8-shape", 671_026_404_352, 37_552_282_624)])
def test_the_dry_run_of_a_moe_shows_total_and_active_parameters_and_the_fit(tmp_path, capsys, name, total, active):
    model = str(ROOT / "tests" / "data" / "models" / name)
    flags = ["--config", str(ROOT / "jobs" / "paper.yaml"), "--model", model, "--tasks", "xcopa", "--langs", "sw",
             "--limit", "4", "--gpu-memory-gb", "80", "--output", str(tmp_path / "out")]
    code, out = _dry_run(capsys, *flags, "--json")
    result = json.loads(out)
    assert (result["parameters"]["total"], result["parameters"]["active"]) == (total, active)
    assert result["memory_fit"]["parameters"] == total and result["memory_fit"]["active_parameters"] == active
    fits = name.startswith("gpt-oss")  # Mixtral's 93 GB of bf16 weights and DeepSeek's 673 GB of FP8 do not
    assert result["memory_fit"]["verdict"] == ("fits" if fits else "refused") and code == (0 if fits else 2)
    code, table = _dry_run(capsys, *flags)
    [line] = [line for line in table.splitlines() if line.startswith("  parameters")]
    assert f"{total:,} in memory (every expert); {active:,} active per token" in line, line
    [line] = [line for line in table.splitlines() if line.startswith("  memory fit")]
    assert f"{total / 1e9:.2f}B parameters ({active / 1e9:.2f}B active per token)" in line, line
    assert ("REFUSED by the memory fit (exit 2)" in table) != fits


def test_the_dry_run_counts_the_prompts_an_actor_would_skip_per_task_and_language(tmp_path, capsys,
                                                                                  tiny_model_dir):
    from types import SimpleNamespace

    import transformers

    from xtp_ray.job.actor import GridSearch
    from xtp_ray.job.config import RunConfig
    from xtp_ray.job.plan import load_slices

    flags = ["--model", str(tiny_model_dir), "--tasks", "xquad,xcopa", "--langs", "en,zh", "--limit", "20",
             "--max-prompt-tokens", "150", "--scoring", "generate", "--max-new-tokens", "8",
             "--output", str(tmp_path / "out")]
    code, out = _dry_run(capsys, *flags, "--json")
    result = json.loads(out)
    assert code == 0 and result["too_long"], result["too_long"]
    # the actor's own rule (GridSearch._too_long) with the model's tokenizer: the same instances
    config = RunConfig(model=str(tiny_model_dir), tasks=["xquad", "xcopa"], langs=["en", "zh"], limit=20,
                       max_prompt_tokens=150, scoring="generate", max_new_tokens=8,
                       data_root=str(ROOT / "xtp_ray" / "data"))
    actor = SimpleNamespace(config=config, max_tokens=150,
                            tokenizer=transformers.AutoTokenizer.from_pretrained(tiny_model_dir))
    expected = {}
    for (task, split, lang), instances in load_slices(config)[0].items():
        skipped = sum(1 for i in instances if GridSearch._too_long(actor, i))
        if skipped:
            expected[(task, split, lang)] = skipped
    assert {(t["task"], t["split"], t["lang"]): t["left_out"] for t in result["too_long"]} == expected
    assert result["too_long_instances"] == sum(expected.values())
    assert all(t["basis"] == "the model's tokenizer" and t["limit"] == 150 for t in result["too_long"])
    code, table = _dry_run(capsys, *flags)
    warnings = [line for line in table.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == len(expected) and all("counted by the model's tokenizer" in w for w in warnings)
    (task, split, lang), n = next(iter(expected.items()))
    assert any(w.startswith(f"warning: {task} {split} {lang}: {n} of 20 instance(s) would be left out") for w in
               warnings), warnings

"""`xtp bench` runs all three paths and compares every cell (speed is its output, never asserted)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from xtp_ray.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_bench_compares_every_cell_with_peer_and_reference():
    """In a subprocess: importing nnsight patches a `save` onto classes, which vLLM's worker extension
    check then refuses in the same process (tests/test_vllm_engine.py)."""
    args = ["bench", "--layers", "2", "--hidden", "64", "--prompt-tokens", "16", "--instances", "2",
            "--max-new-tokens", "3", "--module", "attn"]
    done = subprocess.run([sys.executable, "-m", "xtp_ray.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert sum(line.startswith("bench ") for line in lines) == 2  # score, then generate
    for name in ("reference", "peer", "nnsight", "nnsight-prefix"):  # per mode: 2 x (4 cells + vanilla), all identical
        summary = [line for line in lines if line.startswith(f"fast/{name} speedup")]
        assert len(summary) == 2 and all(line.endswith("cells 10/10 identical") for line in summary), summary
    assert lines[-1].startswith("fast/reference speedup ")
    assert any("range" in line and line.startswith("fast engine:") for line in lines)


def test_sweep_prints_time_per_cell_for_each_chunk(capsys):
    assert main(["bench", "--sweep", "4,8", "--layers", "3", "--hidden", "64", "--prompt-tokens", "16",
                 "--max-new-tokens", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(" cells per forward")[0] for line in lines[-2:]] == ["4", "8"]


def test_bench_without_row_sharing_is_still_identical(capsys):
    assert main(["bench", "--mode", "generate", "--layers", "2", "--hidden", "64", "--prompt-tokens", "16",
                 "--instances", "1", "--max-new-tokens", "3", "--no-peer", "--no-share"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].endswith("no row sharing")
    assert lines[-1].startswith("fast/reference speedup ") and lines[-1].endswith("cells 5/5 identical")


def test_gpu_suite_small_writes_its_json(tmp_path, capsys):
    """`--suite gpu --small`: every phase on the CPU, one JSON file and one JSON line."""
    path = tmp_path / "suite.json"
    assert main(["bench", "--suite", "gpu", "--small", "--json", str(path)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    result = json.loads(path.read_text())
    assert set(result["phases"]) == {"kernels", "parity", "build", "generate", "score", "own_attention",
                                     "speculation", "subset", "overhead"}
    assert not result["errors"] and not result["skipped"]
    assert line["parity"] is True and line["fused_everywhere"] is True
    assert all(v["identical"] == v["cells"] for v in result["phases"]["parity"].values())
    for mode in ("generate", "score"):
        phase = result["phases"][mode]
        assert phase["plan"]["rows_per_forward"] == 2 * phase["cells_per_instance"]  # 2 instances, one chunk
        assert phase["fused_fallbacks_per_run"] == 0 and phase["median_s"] > 0
        planning = phase["planning_per_run"]  # step 0 always planned; decode steps planned or reused
        forwards = 1 + (phase["new_tokens"] - 1 if phase["new_tokens"] else 0)
        assert planning["planned"] >= 1 and planning["planned"] + planning["reused"] <= forwards
        assert planning["host_s"] > 0 and line[f"{mode}_planning_s"] == round(planning["host_s"], 4)
        assert phase["forwards_ahead_per_run"] == {"kept": 0, "redone": 0}  # on a CPU decoding runs in turn
        top = phase["profile"]["top"]  # where the time goes: on a CPU, the host ops with the most self time
        assert top["of"] == "host ops" and 0 < len(top["by_self_time"]) <= 15
        seconds = [op["s"] for op in top["by_self_time"]]
        assert seconds == sorted(seconds, reverse=True) and seconds[0] > 0
        assert 0 < sum(op["share"] for op in top["by_self_time"]) <= 1 + 1e-9
        assert any(op["name"] in ("aten::mm", "aten::addmm", "aten::bmm") for op in top["by_self_time"])
    subset = result["phases"]["subset"]["reference"]
    assert subset["identical_decisions"] == subset["cells"]
    own = result["phases"]["own_attention"]  # both own-part kernels, timed and compared, then the grid with each
    assert own["rows"] == 2 * (2 ** 2 + 1) and set(own["calls"]) == {"own_1", "own_11", "own_21"}
    for entry in own["calls"].values():
        assert entry["fused_ran"] and entry["fallback_error"] is None
        assert entry["fused_ms"] > 0 and entry["matmul_ms"] > 0 and entry["max_out_diff"] < 1e-5
    assert all(len(own["grid"][kernel]["seconds"]) == 2 for kernel in ("fused", "matmul"))
    assert line["own_attention_faster"] == own["faster"] and own["ratio"] >= 1
    assert own["default"] == "fused"
    ahead = result["phases"]["speculation"]  # forwards queued ahead of the tokens, against in turn
    assert all(len(ahead["grid"][name]["seconds"]) == 2 for name in ("ahead", "in_turn"))
    assert ahead["grid"]["in_turn"]["same_tokens_as_first"] == ahead["cells"] == 2 * (2 ** 2 + 1)
    assert ahead["forwards_kept"] > 0  # forced on here (on a CPU the default is off)
    assert line["speculation_kept"] == [ahead["forwards_kept"], ahead["forwards_kept"] + ahead["forwards_redone"]]
    overhead = result["phases"]["overhead"]  # the host's decode step on the device (here the CPU)
    assert overhead["rows"] == 64 and overhead["device"] == "cpu" and overhead["to_host_per_step"] == 1
    assert line["overhead_ms_per_step"] == round(overhead["ms_per_step"], 3) > 0


def test_gpu_suite_deadline_skips_phases_and_says_so(tmp_path, capsys):
    path = tmp_path / "suite.json"
    assert main(["bench", "--suite", "gpu", "--small", "--json", str(path), "--deadline-s", "0"]) == 0
    result = json.loads(path.read_text())
    assert result["phases"] == {} and "would pass" in result["skipped"]["kernels"]


# What the GPU image lacks: the engine and bench must not import any of these.
ABSENT_ON_THE_GPU_IMAGE = ("ray", "pyarrow", "vllm", "matplotlib", "boto3", "pandas", "nnsight")
BLOCKER = """
import importlib.util, sys
ABSENT = {absent!r}
class Block:  # an import of an absent package fails as it would there
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: absent on the GPU image)")
sys.meta_path.insert(0, Block())
find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: (  # and probes for it (transformers') find nothing
    None if name.split(".")[0] in ABSENT else find_spec(name, package))
sys.argv = ["xtp"] + {argv!r}
from xtp_ray.cli import main
sys.exit(main())
"""


@pytest.mark.parametrize("argv", [
    ["bench", "--suite", "gpu", "--small"],
    ["bench", "--mode", "score", "--layers", "2", "--hidden", "64", "--prompt-tokens", "16", "--instances", "1",
     "--dtype", "bfloat16"],
])
def test_bench_runs_as_carried_on_the_gpu_image(tmp_path, argv):
    """From a plain checkout (`python -m xtp_ray.cli`, not installed) with ray, pyarrow, vllm, matplotlib
    and nnsight unimportable, as on the GPU image."""
    code = BLOCKER.format(absent=ABSENT_ON_THE_GPU_IMAGE, argv=argv + (["--json", str(tmp_path / "s.json")]
                                                                      if "--suite" in argv else []))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "nnsight: not installed, skipped" in done.stdout or "--suite" in argv


@pytest.mark.parametrize("ahead", ["auto", "on"])  # auto: in turn on a CPU; on: forwards queued ahead
def test_overhead_reports_time_and_transfers_per_step(ahead, capsys):
    assert main(["bench", "--overhead", "--layers", "4", "--ahead", ahead]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    head = [line for line in lines if line.startswith("host overhead: ")]
    assert len(head) == 1 and "1.00 device->host syncs" in head[0], lines  # one per step, ahead or not
    kept = [line for line in lines if line.startswith("decode forwards run ahead of the tokens: ")]
    assert len(kept) == (ahead == "on"), lines
    assert sum(line.startswith("at 2 rows (dispatch alone): ") for line in lines) == 1, lines
    planning = [line for line in lines if line.startswith("planning on the host: ")]
    assert len(planning) == 1 and "of 20)" in planning[0], lines
    assert lines[-1].startswith("plain HF decode step, same model")


@pytest.mark.parametrize("argv,flag", [(["--layers", "0"], "--layers"), (["--instances", "0"], "--instances"),
                                       (["--prompt-tokens", "0"], "--prompt-tokens"),
                                       (["--shape", "llama-9000"], "--shape")])
def test_bad_bench_sizes_are_refused_with_the_flag(argv, flag, capsys):
    assert main(["bench", "--mode", "score", *argv]) == 2
    err = capsys.readouterr().err
    assert flag in err and err.count("\n") == 1

"""`xtp nightly`: a night of two models end to end, and a second night started while the first still runs
(as a RayCronJob's next tick may) exits at once, naming the running night, and starts no work."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ""}


def _night(output: Path, night: str, *flags: str, models: str = "tiny:LlamaForCausalLM:2") -> list[str]:
    return [sys.executable, "-m", "xtp_ray.cli", "nightly", "--models", models, "--langs", "sw", "--output",
            str(output), "--night", night, *flags]


def test_a_second_night_refuses_to_overlap_the_first(tmp_path):
    output = tmp_path / "runs"
    # the first night generates (20 new tokens over a 4 x 4 grid) long enough to be caught running
    first = subprocess.Popen(_night(output, "n1", "--limit", "16", "--scoring", "generate",
                                    models="tiny:LlamaForCausalLM:4"),
                             env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lease = output / "_nightly" / "lease.json"
        deadline = time.time() + 120
        while not lease.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert lease.exists(), "the first night never took its lease"
        start = time.time()
        second = subprocess.run(_night(output, "n2", "--limit", "1"), env=ENV, capture_output=True, text=True,
                                timeout=120)
        seconds = time.time() - start
        assert first.poll() is None, "the first night ended before the second was tried: the test proves nothing"
    finally:
        out, err = first.communicate(timeout=600)
    assert second.returncode == 2, second.stderr[-2000:]
    [line] = [line for line in second.stderr.splitlines() if line.startswith("xtp nightly: error:")]
    assert "another night is still running: night n1 (tiny:LlamaForCausalLM:4) on host" in line, line
    assert "this night (n2) starts no work" in line and "Traceback" not in second.stderr
    assert seconds < 30  # at once: no Ray started, nothing planned
    assert not (output / "tiny-LlamaForCausalLM-2").exists()  # the second night's model: no run, no directory
    assert first.returncode == 0, err[-3000:]
    assert "night n1: tiny-LlamaForCausalLM-4: " in out
    manifest = json.loads((output / "tiny-LlamaForCausalLM-4" / "tiny-LlamaForCausalLM-4-n1" / "manifest.json")
                          .read_text())
    assert manifest["status"] == "complete"
    assert not lease.exists()  # given back: the next night runs


def test_a_night_runs_each_model_and_writes_its_history(tmp_path):
    output = tmp_path / "runs"
    done = subprocess.run(_night(output, "2026-12-06", "--limit", "2",
                                 models="tiny:LlamaForCausalLM:2,tiny:Qwen2ForCausalLM:2"),
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("tiny-LlamaForCausalLM-2", "tiny-Qwen2ForCausalLM-2"):
        assert (output / name / f"{name}-2026-12-06" / "report" / "report.json").exists()
        assert (output / name / "history" / "history.json").exists()
        assert f"night 2026-12-06: {name}: " in done.stdout
    bad = subprocess.run(_night(output, "../x"), env=ENV, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--night '../x'" in bad.stderr and "Traceback" not in bad.stderr

"""A memory budget holds: measured as resident-memory growth in fresh processes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xtp_ray.engine import hf
from xtp_ray.engine.tiny import build_tiny_model

PROBE = Path(__file__).with_name("memory_probe.py")
BUDGET_MB = 20  # well above the allocator's run-to-run noise (~5 MB seen)


def _grew(budget, cells_per_chunk, instances=4):
    out = subprocess.run([sys.executable, str(PROBE), str(budget), str(cells_per_chunk), str(instances)],
                         capture_output=True,
                         text=True, timeout=300,
                         # one malloc arena per thread kind: resident memory then follows what is
                         # allocated instead of how many arenas happened to be opened
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "MALLOC_ARENA_MAX": "2",
                              "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])["grew_mb"]


def test_peak_memory_stays_under_the_budget():
    """4 instances x 257 cells: in one forward the rows' own keys/values alone take ~90 MB, so the gap to
    the floor (~55 MB here) is ~80 MB against ~10 MB of run-to-run noise (2 instances gave a ~45 MB gap,
    and one clean-clone run measured 36)."""
    floor = _grew("none", 8)  # 8 cells per forward: about what the run needs whatever the chunk
    unbounded = _grew("none", 257)  # all 257 cells in one forward
    bounded = _grew(BUDGET_MB, 257)
    assert unbounded - floor > 2 * BUDGET_MB, (floor, unbounded)  # the budget has something to hold back
    assert bounded - floor <= BUDGET_MB, (floor, bounded, unbounded)


def test_a_budget_below_one_cell_is_refused(tokenizer):
    model = build_tiny_model("LlamaForCausalLM", len(tokenizer), num_layers=2)
    with pytest.raises(ValueError, match="memory budget of 0 MiB is below one cell's"):
        hf.run_grid(model, tokenizer, ["a b c"], ["d e f"], [], "ffn", 3, memory_budget_mb=0.0001)

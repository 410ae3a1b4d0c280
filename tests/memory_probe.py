"""Run one grid in this process and print how much its resident memory grew (MiB).

    python tests/memory_probe.py BUDGET_MB|none CELLS_PER_CHUNK [INSTANCES]
Used by test_memory.py in fresh processes. Growth = the peak resident set (VmHWM) during
the grid minus the resident set just before it; the peak is reset first (Linux clear_refs 5),
so what tokenizer training or model building peaked at earlier does not count.
"""
import json
import sys
from pathlib import Path

import torch

from xtp_ray.cells import parse_cells
from xtp_ray.engine import hf
from xtp_ray.engine.tiny import build_tiny_model, tokenizer_corpus, train_tokenizer

torch.set_num_threads(1)
texts = tokenizer_corpus()
tokenizer = train_tokenizer(texts[:200], 512)
model = build_tiny_model("LlamaForCausalLM", len(tokenizer), num_layers=16, hidden=128, heads=4, kv_heads=2)
prompt = texts[0]
cells = parse_cells("full", 16)
hf.run_grid(model, tokenizer, [prompt], [prompt], cells[:1], "ffn", 2)  # warm up allocator and kernels


def status_kib(field):
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set to the current one
before = status_kib("VmRSS")
budget = None if sys.argv[1] == "none" else float(sys.argv[1])
instances = int(sys.argv[3]) if len(sys.argv) > 3 else 2
hf.run_grid(model, tokenizer, [prompt] * instances, [prompt] * instances, cells, "ffn", 20,
                cells_per_chunk=int(sys.argv[2]), memory_budget_mb=budget)
peak = status_kib("VmHWM")
print(json.dumps({"grew_mb": (peak - before) / 1024}))

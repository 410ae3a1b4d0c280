"""Run one grid in this process and print how much its resident memory grew (MiB).

    python tests/memory_probe.py BUDGET_MB|none CELLS_PER_CHUNK
Used by test_memory.py in fresh processes (ru_maxrss is a per-process high-water mark).
"""
import json
import resource
import sys

import torch

from xtp_ray import engine
from xtp_ray.cells import parse_cells
from xtp_ray.tiny import build_tiny_model, tokenizer_corpus, train_tokenizer

torch.set_num_threads(1)
texts = tokenizer_corpus()
tokenizer = train_tokenizer(texts[:200], 512)
model = build_tiny_model("LlamaForCausalLM", len(tokenizer), num_layers=16, hidden=128, heads=4, kv_heads=2)
prompt = texts[0]
cells = parse_cells("full", 16)
engine.run_grid(model, tokenizer, [prompt], [prompt], cells[:1], "ffn", 2)  # warm up allocator and kernels
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
budget = None if sys.argv[1] == "none" else float(sys.argv[1])
engine.run_grid(model, tokenizer, [prompt] * 2, [prompt] * 2, cells, "ffn", 20, cells_per_chunk=int(sys.argv[2]),
                memory_budget_mb=budget)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"grew_mb": (after - before) / 2**20}))

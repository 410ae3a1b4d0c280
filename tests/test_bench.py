"""`xtp bench` runs both paths and compares every cell (speed is its output, never asserted)."""
from xtp_ray.cli import main


def test_bench_compares_every_cell_and_prints_the_ratio_last(capsys):
    args = ["bench", "--layers", "2", "--hidden", "64", "--prompt-tokens", "16", "--instances", "2",
            "--max-new-tokens", "3", "--module", "attn"]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    score_last = next(line for line in lines if line.startswith("fast/reference speedup"))
    assert score_last.endswith("cells 10/10 identical")  # 2 instances x (4 cells + vanilla)
    assert lines[-1].startswith("fast/reference speedup ") and lines[-1].endswith("cells 10/10 identical")
    assert sum(line.startswith("bench ") for line in lines) == 2  # score, then generate

"""`xtp bench` runs all three paths and compares every cell (speed is its output, never asserted)."""
from xtp_ray.cli import main


def test_bench_compares_every_cell_with_peer_and_reference(capsys):
    args = ["bench", "--layers", "2", "--hidden", "64", "--prompt-tokens", "16", "--instances", "2",
            "--max-new-tokens", "3", "--module", "attn"]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert sum(line.startswith("bench ") for line in lines) == 2  # score, then generate
    for name in ("reference", "peer"):  # per mode: 2 instances x (4 cells + vanilla), every one identical
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

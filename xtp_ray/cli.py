"""The `xtp` command: grid (direct probing), bench, tasks, config, run, aggregate, nightly, history."""
from __future__ import annotations

import argparse
import sys

from .names import DEFAULT_OWN_KERNEL, DTYPE_NAMES, MODULES, OWN_KERNELS, check_positive

AHEAD = {"auto": None, "on": True, "off": False}  # --ahead: the hf engine's `speculate`


def _add_grid(sub):
    p = sub.add_parser("grid", help="run a transplant grid on donor/recipient pairs")
    p.add_argument("--model", required=True, help="save_pretrained directory or hub id")
    p.add_argument("--input", help='jsonl with {"id", "donor", "recipient"} per line')
    p.add_argument("--task", help="instead of --input: a task name (see `xtp tasks`)")
    p.add_argument("--lang", help="with --task: the language")
    p.add_argument("--split", default="sample", help="with --task: sample or unseen")
    p.add_argument("--data-root", help="with --task: data location (default: bundled samples)")
    p.add_argument("--limit", type=int, help="at most this many instances")
    p.add_argument("--output", required=True, help="output Parquet file")
    p.add_argument("--module", default="ffn", choices=MODULES)
    p.add_argument("--cells", default="full", help="full, target-first or I:J,I:J,...")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--dtype", default="float32", choices=DTYPE_NAMES)
    p.add_argument("--attn-implementation", default=None, help="default: eager for float32, else sdpa")
    p.add_argument("--batch-size", type=int, default=4, help="instances per engine call")
    p.add_argument("--cells-per-chunk", type=int, default=None, help="cells per forward (bounds memory)")
    p.add_argument("--engine", default="hf", choices=["hf", "vllm", "reference", "fast"],
                   help="hf (fast, exact), vllm, or reference (the slow definition); fast = hf")
    p.add_argument("--trust-remote-code", action="store_true")


def _add_bench(sub):
    p = sub.add_parser("bench", help="time the reference path and the fast engine side by side")
    p.add_argument("--mode", default="both", choices=["generate", "score", "both"])
    p.add_argument("--architecture", default="LlamaForCausalLM")
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--instances", type=int, default=2)
    p.add_argument("--cells", default="full")
    p.add_argument("--module", default="ffn", choices=MODULES)
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--cells-per-chunk", type=int, default=None, help="cells per instance per forward")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-peer", action="store_true", help="skip the batched plain-hooks peer")
    p.add_argument("--no-share", action="store_true",
                   help="the hf engine computes every row in every layer (no row sharing, engine/sharing.py)")
    p.add_argument("--own-kernel", default=DEFAULT_OWN_KERNEL, choices=OWN_KERNELS,
                   help="hf engine: how rows attend to their own tokens (default: torch's fused kernel; "
                        "matmul: bmm)")
    p.add_argument("--ahead", default="auto", choices=["auto", "on", "off"],
                   help="hf engine: queue each decode forward before the host has its tokens (auto: on a GPU)")
    p.add_argument("--engine", default="hf", choices=["hf", "vllm"],
                   help="the engine to time against the others (vllm: against hf and the reference)")
    p.add_argument("--sweep", help="instead: generation ms per cell at these cells per forward, e.g. 64,512 "
                                   "(one instance, 512 cells; --layers defaults to 32 here)")
    p.add_argument("--shape", help="a named model shape instead of --layers/--hidden/...: llama2-7b")
    p.add_argument("--heads", type=int, help="attention heads (default hidden/64)")
    p.add_argument("--kv-heads", type=int, help="KV heads (default hidden/128)")
    p.add_argument("--intermediate", type=int, help="MLP width (default 2 x hidden)")
    p.add_argument("--vocab", type=int, help="vocabulary size (default the local 512-token tokenizer's)")
    p.add_argument("--dtype", choices=DTYPE_NAMES,
                   help="float32 (default: exactness is checked to 1e-4), bfloat16 or float16 "
                        "(--suite gpu: default bfloat16)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]; the model is built there")
    p.add_argument("--no-reference", action="store_true", help="skip the serial reference (big shapes)")
    p.add_argument("--no-nnsight", action="store_true", help="skip the nnsight peers (idiomatic and prefix-reusing)")
    p.add_argument("--overhead", action="store_true",
                   help="instead: host time per decode step and transfers per step (32 layers of negligible "
                        "width, 1024 rows, one thread)")
    p.add_argument("--suite", choices=["gpu", "results", "schedule"],
                   help="gpu: the one-shot GPU check (kernels, parity, 7B-shape grid, scoring, peer), one JSON file; "
                        "results: aggregation of a synthetic nightly run (--rows, --dir) from partials, from "
                        "candidates and the pandas definition, side by side; schedule: jobs/paper.yaml and "
                        "jobs/llama70b.yaml planned by size and by cost on 8, 32 and 128 actors (--data-root)")
    p.add_argument("--manifest", help="with --suite schedule: instead, a run's manifest.json: its shards' measured "
                                      "seconds per instance by task against the cost model's")
    p.add_argument("--data-root", help="with --suite schedule: the data (default ../shared/data, else the bundled "
                                       "samples)")
    p.add_argument("--rows", type=int, default=20_000_000, help="with --suite results: candidate rows")
    p.add_argument("--dir", default="bench-results-run", help="with --suite results: where its shards go (reused)")
    p.add_argument("--no-before", action="store_true", help="with --suite results: skip the pandas definition")
    p.add_argument("--small", action="store_true", help="with --suite: tiny shapes on the CPU (CI)")
    p.add_argument("--json", default="bench-gpu.json", help="with --suite: where its JSON goes")
    p.add_argument("--deadline-s", type=float, default=450.0,
                   help="with --suite: phases that would end past this many seconds are skipped")


def _add_tasks(sub):
    p = sub.add_parser("tasks", help="every task: languages and split sizes in a data location, or where its "
                       "files go and their source")
    p.add_argument("--data-root", help="local dir, s3://..., or hf:PATH (default: bundled samples)")


def _add_config(sub):
    p = sub.add_parser("config", help="the JSON Schema of run configurations (jobs/*.yaml), for editors")
    p.add_argument("--schema", action="store_true", required=True,
                   help="print the JSON Schema every `xtp run --config` file follows")


def _print_schema() -> int:
    import json

    from .job.config import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def _add_history(sub):
    p = sub.add_parser("history", help="accuracy across runs; exit 3 when the newest run regressed")
    p.add_argument("--output", required=True, help="where the runs live (local or s3://)")
    p.add_argument("--run-ids", help="comma-separated, oldest first (default: every run, by start time)")
    p.add_argument("--threshold", type=float, default=2.0,
                   help="points the newest run may fall below the previous one before it counts (default 2)")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="a drop must also be significant at this level (McNemar exact, Holm; default 0.05)")


def _print_history(args) -> int:
    from .results.history import REGRESSION_EXIT, write_history

    if not 0 < args.alpha < 1:
        raise ValueError(f"--alpha must lie between 0 and 1, got {args.alpha}")
    if not 0 <= args.threshold < 100:
        raise ValueError(f"--threshold is in points, from 0 to 100; got {args.threshold}")
    run_ids = [r.strip() for r in args.run_ids.split(",") if r.strip()] if args.run_ids else None
    if args.run_ids is not None and not run_ids:
        raise ValueError("--run-ids is empty: name the runs, oldest first, or leave the flag out")
    history = write_history(args.output, run_ids, args.threshold, args.alpha)
    print(f"history of {len(history['runs'])} runs: {history['uri']}")
    for r in history["regressions"]:
        test = (f", {r['lost']} lost / {r['gained']} gained of {r['instances']}, p = {r['p_holm']:.3g} (Holm)"
                if r["p_value"] is not None else ", not tested: no per-instance outcomes")
        print(f"regression: {r['table']} {r['lang']} {r['metric']}: {100 * r['previous']:.1f} -> "
              f"{100 * r['newest']:.1f} (-{r['drop_points']:.1f} points{test})")
    for c in history.get("comparisons", []):
        if c.get("note"):
            print(f"note: {c['table']} {c['lang']} {c['metric']}: {c['note']}")
    return REGRESSION_EXIT if history["regressions"] else 0


def _print_tasks(data_root: str | None) -> int:
    """Every registered task: its languages and sizes where the root holds its data, else where its files go
    and the dataset they come from. Rows left out are listed (stderr) and counted; they fail nothing: 0."""
    from .tasks import describe

    rows, missing, found = describe(data_root)
    print(f"{'task':<16} {'split':<7} {'lang':<6} {'instances':>9} {'groups':>6} {'left out':>8} {'noted':>6}")
    for row in rows:
        groups = "-" if row["groups"] is None else row["groups"]
        print(f"{row['task']:<16} {row['split']:<7} {row['lang']:<6} {row['instances']:>9} {groups:>6} "
              f"{row['errors']:>8} {row['notes']:>6}")
    print("instances: rows loaded; groups: questions scored as one (a task with groups, e.g. culturalbench, "
          "counts questions in every figure);\nleft out, noted: lines of the report of what was left out, each "
          "naming a file, a row or a question")
    if missing:
        where = (f"under {data_root}" if data_root else "in the bundled samples (the release's sample split of four "
                 "tasks; put these files under a directory and pass it as --data-root)")
        print(f"\nno data {where}: where the files go, and [the dataset they come from]")
        for row in missing:
            print(f"{row['task']:<16} {row['split']:<7} {row['where']}  [{row['source']}]")
    notes = [e for e in found if e.note]
    if notes:  # left out by a task's own rule (MKQA's No Answer golds): counted, no error
        print(f"noted: {len(notes)} note(s), e.g. {notes[0]}")
    errors = [e for e in found if not e.note]
    for error in errors:
        print(f"left out: {error}", file=sys.stderr)
    if errors:  # listing is all this command does: what a run would leave out is counted, not failed
        print(f"left out: {len(errors)} line(s) on stderr (a run reports them in errors.jsonl)")
    return 0


def _bench(args) -> int:
    check_positive(layers=args.layers, hidden=args.hidden, prompt_tokens=args.prompt_tokens, instances=args.instances,
                   cells_per_chunk=args.cells_per_chunk, threads=args.threads, heads=args.heads,
                   kv_heads=args.kv_heads, intermediate=args.intermediate, vocab=args.vocab)
    if args.max_new_tokens < 0:
        raise ValueError(f"--max-new-tokens must be at least 0, got {args.max_new_tokens}")
    if args.suite == "results":
        from .tools.scale_bench import run_scale_bench

        check_positive(rows=args.rows)
        run_scale_bench(args.dir, args.rows, before=not args.no_before)
        return 0
    if args.suite == "schedule":
        from .tools.schedule_bench import GOAL, run_schedule_bench

        if args.manifest:
            from .tools.schedule_bench import shard_costs_measured

            print("\n".join(shard_costs_measured(args.manifest)))
            return 0
        rows = run_schedule_bench(args.data_root)
        return 0 if max(r["by_cost"] for r in rows) <= GOAL else 1
    if args.suite:
        import json

        from .tools.gpu_check import run_suite, summary

        result = run_suite(args.small, args.json, args.deadline_s, args.shape or "llama2-7b",
                           args.dtype or "bfloat16", args.instances)
        print(json.dumps(summary(result)))
        return 1 if result["errors"] else 0
    from .tools.bench import SHAPES, run_bench, run_sweep

    if args.shape:
        if args.shape not in SHAPES:
            raise ValueError(f"--shape {args.shape!r} unknown; known: {', '.join(SHAPES)}")
        shape = SHAPES[args.shape]
        args.architecture, args.layers, args.hidden = shape["architecture"], shape["layers"], shape["hidden"]
        args.heads, args.kv_heads = shape["heads"], shape["kv_heads"]
        args.intermediate, args.vocab = shape["intermediate"], shape["vocab"]
    if args.overhead:
        from .tools.bench import run_overhead

        run_overhead(args.layers if args.layers != 16 else 32, share=not args.no_share, threads=args.threads or 1,
                     own_kernel=args.own_kernel, device=args.device, speculate=AHEAD[args.ahead])
        return 0
    if args.sweep:
        try:
            chunks = [int(c) for c in args.sweep.split(",")]
        except ValueError:
            raise ValueError(f"--sweep {args.sweep!r}: expected comma-separated integers, e.g. 64,512") from None
        check_positive(sweep=min(chunks))
        run_sweep(chunks, args.layers if args.layers != 16 else 32, args.hidden, args.prompt_tokens,
                  max_new_tokens=args.max_new_tokens, threads=args.threads)
        return 0
    modes = ["score", "generate"] if args.mode == "both" else [args.mode]
    for mode in modes:
        run_bench(mode, args.architecture, args.layers, args.hidden, args.prompt_tokens,
                  args.instances, args.cells, args.module, args.max_new_tokens,
                  cells_per_chunk=args.cells_per_chunk, threads=args.threads,
                  peer=not args.no_peer and args.engine == "hf", engine_name=args.engine,
                  share=not args.no_share, heads=args.heads, kv_heads=args.kv_heads,
                  intermediate=args.intermediate, vocab=args.vocab, dtype=args.dtype or "float32", device=args.device,
                  reference_run=not args.no_reference, nnsight=not args.no_nnsight, own_kernel=args.own_kernel,
                  speculate=AHEAD[args.ahead])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xtp", description=__doc__,
                                     epilog="--debug (anywhere): show tracebacks instead of one line per error")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_grid(sub)
    _add_bench(sub)
    _add_tasks(sub)
    _add_config(sub)
    _add_history(sub)
    sub.add_parser("run", help="the distributed job: grid search + aggregation (see `xtp run --help`)",
                   add_help=False)
    sub.add_parser("aggregate", help="tables, upper bound and heatmaps of a run", add_help=False)
    sub.add_parser("nightly", help="one night: a grid search per model, then each model's history; never two "
                   "nights at once (see `xtp nightly --help`)", add_help=False)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("run", "aggregate"):
        from .job.entry import aggregate_main, run_main

        return run_main(argv[1:]) if argv[0] == "run" else aggregate_main(argv[1:])
    if argv and argv[0] == "nightly":
        from .job.nightly import nightly_main

        return nightly_main(argv[1:])
    debug = "--debug" in argv
    args = parser.parse_args([a for a in argv if a != "--debug"])
    try:
        if args.command == "grid":
            from .tools.grid import run_grid

            return run_grid(args)
        if args.command == "history":
            return _print_history(args)
        if args.command == "tasks":
            return _print_tasks(args.data_root)
        if args.command == "config":
            return _print_schema()
        return _bench(args)
    except Exception as exc:  # noqa: BLE001 - the one place errors become one line and an exit code
        from .errors import report

        return report(f"xtp {args.command}", exc, debug)


if __name__ == "__main__":
    sys.exit(main())

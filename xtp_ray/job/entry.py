"""Entry points shared by `xtp run` / `xtp aggregate` and jobs/*.py (`ray job submit`).

Every mistake a user can make ends in one line naming the file, row and field (or the
flag) and exit code 2; `--debug` shows the traceback instead (`errors.report`). A run
whose data had rows or files left out still runs the rest, then exits 2 after saying
what was left out.
"""
from __future__ import annotations

import argparse
import logging
import sys

from ..errors import USER_ERROR_EXIT, report
from .config import add_flags, load_config


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one line per error")


def grid_search_main(argv: list[str] | None = None, aggregate: bool = True) -> int:
    parser = argparse.ArgumentParser(prog="xtp run", description="grid search (and aggregation) as one job")
    add_flags(parser)
    parser.add_argument("--no-aggregate", action="store_true", help="only write the candidates")
    parser.add_argument("--compare-with", help="an earlier run id (under the same output) to report deltas against")
    parser.add_argument("--dry-run", action="store_true",
                        help="plan only: shards, instances, cells, rows, tokens, feasibility, memory fit and the "
                             "predicted GPU-seconds and wall time; no Ray work, nothing written")
    parser.add_argument("--json", action="store_true", help="with --dry-run: print JSON instead of the table")
    parser.add_argument("--take-over", action="store_true",
                        help="if another driver holds the run's lease, wait for it to expire and take the run")
    _debug(parser)
    args = parser.parse_args(argv)
    _setup_logging()
    try:
        return _grid_search(args, aggregate)
    except Exception as exc:  # noqa: BLE001 - the one place errors become one line and an exit code
        return report("xtp run", exc, args.debug)


def _grid_search(args, aggregate: bool) -> int:
    config = load_config(args)
    if args.dry_run:
        from .dryrun import dry_run, print_dry_run, refusals

        result = dry_run(config)
        print_dry_run(result, args.json)
        return USER_ERROR_EXIT if refusals(result) else 0  # left-out rows are listed, not a refusal
    if args.compare_with:
        from ..results.aggregation import earlier_report_uri

        earlier_report_uri(config.output, args.compare_with)  # before any work, not after it
    from .pipeline import run_job

    summary = run_job(config, take_over=args.take_over)
    left_out = summary["left_out"] + [f"{s['instance_id']}: {s['reason']}" for s in summary["skipped"]]
    for line in left_out:
        print(f"left out: {line}", file=sys.stderr)
    print(f"candidates: {summary['run_dir']}/candidates ({summary['shards']} shards, {summary['shards_run']} run now)")
    if summary["instances"]:
        print(f"throughput: {summary['instances'] / summary['seconds']:.2f} instances/s, "
              f"{summary['cells'] / summary['seconds']:.1f} cells/s")
    if summary.get("busy_share") is not None:
        print(f"actors busy: {100 * summary['busy_share']:.0f}% of their time from the first shard to the last "
              "(per-shard timings in the manifest)")
    if aggregate and not args.no_aggregate:
        from ..results.aggregation import aggregate_run

        result = aggregate_run(config.output, config.run_id, args.compare_with)
        _print_overview(result)
        print(f"report: {summary['run_dir']}/report/report.html (+ report.md, report.json, "
              f"{len(result['figures'])} figures)")
    if summary["left_out"]:
        print(f"xtp run: {len(summary['left_out'])} bad row(s) or file(s) left out (listed above, and in "
              f"{summary['run_dir']}/errors.jsonl); the rest ran", file=sys.stderr)
        return USER_ERROR_EXIT
    return 0


def _print_overview(report: dict) -> None:
    for key, table in report["tables"].items():
        upper = table.get("upper_bound_overall")
        print(f"{key}: vanilla {100 * table['vanilla_overall']:.1f}% (std {100 * table['vanilla_std']:.1f}), "
              + (f"upper bound {100 * upper:.1f}% (std {100 * table['upper_bound_std']:.1f})" if upper is not None else ""))


def aggregate_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xtp aggregate", description="tables, upper bound and heatmaps of a run")
    parser.add_argument("--output", default="xtp-out", help="the run's output location (local or s3://)")
    parser.add_argument("--run-id", default="default")
    parser.add_argument("--compare-with", help="an earlier run id to report deltas against")
    parser.add_argument("--from-candidates", action="store_true",
                        help="recompute every shard's partial aggregates from its rows (streamed shard by shard) "
                             "instead of reading them from the shard footers")
    _debug(parser)
    args = parser.parse_args(argv)
    _setup_logging()
    try:
        from ..results.aggregation import aggregate_run

        result = aggregate_run(args.output, args.run_id, args.compare_with, args.from_candidates)
    except Exception as exc:  # noqa: BLE001
        return report("xtp aggregate", exc, args.debug)
    _print_overview(result)
    shards = result["shards"]
    if shards["missing"]:
        print(f"partial: {shards['committed']} of {shards['planned']} planned shards committed, {shards['missing']} "
              "missing (the job may still be running)")
    print(f"report: {args.output.rstrip('/')}/{args.run_id}/report/report.html")
    return 0

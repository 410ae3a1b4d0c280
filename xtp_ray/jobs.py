"""Entry points shared by `xtp run` / `xtp aggregate` and jobs/*.py (`ray job submit`)."""
from __future__ import annotations

import argparse
import logging
import sys

from .config import ConfigError, add_flags, load_config


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def grid_search_main(argv: list[str] | None = None, aggregate: bool = True) -> int:
    parser = argparse.ArgumentParser(prog="xtp run", description="grid search (and aggregation) as one job")
    add_flags(parser)
    parser.add_argument("--no-aggregate", action="store_true", help="only write the candidates")
    parser.add_argument("--compare-with", help="an earlier run id to report deltas against")
    parser.add_argument("--take-over", action="store_true",
                        help="if another driver holds the run's lease, wait for it to expire and take the run")
    args = parser.parse_args(argv)
    _setup_logging()
    try:
        config = load_config(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    from .lease import LeaseHeldError
    from .pipeline import run_job

    try:
        summary = run_job(config, take_over=args.take_over)
    except (ValueError, LeaseHeldError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in summary["left_out"] + [f"{s['instance_id']}: {s['reason']}" for s in summary["skipped"]]:
        print(f"left out: {line}")
    print(f"candidates: {summary['run_dir']}/candidates ({summary['shards']} shards, {summary['shards_run']} run now)")
    if summary["instances"]:
        print(f"throughput: {summary['instances'] / summary['seconds']:.2f} instances/s, "
              f"{summary['cells'] / summary['seconds']:.1f} cells/s")
    if aggregate and not args.no_aggregate:
        from .aggregation import aggregate_run

        report = aggregate_run(config.output, config.run_id, args.compare_with)
        _print_overview(report)
        print(f"report: {summary['run_dir']}/report/report.html (+ report.md, report.json, "
              f"{len(report['figures'])} figures)")
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
    args = parser.parse_args(argv)
    _setup_logging()
    from .aggregation import aggregate_run

    try:
        report = aggregate_run(args.output, args.run_id, args.compare_with)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print_overview(report)
    print(f"report: {args.output.rstrip('/')}/{args.run_id}/report/report.html")
    return 0

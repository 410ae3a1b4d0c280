"""Entry points shared by `xtp run` / `xtp aggregate` and jobs/*.py (`ray job submit`).

Every mistake a user can make ends in one line naming the file, row and field (or the
flag) and exit code 2; `--debug` shows the traceback instead (`errors.report`). A run
whose data had rows or files left out (for any reason: malformed, misaligned, too long, a group
skipped with a member) still runs the rest, then exits 2 after saying what was left out; notes (a
task's own rule, MKQA's No Answer golds) are counted and exit 0. Every one is a line of errors.jsonl.
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


def run_main(argv: list[str] | None = None, aggregate: bool = True) -> int:
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
    from .run import run_job

    summary = run_job(config, take_over=args.take_over)
    print_left_out(summary["left_out"], summary["languages"])
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
    return finish_left_out(summary["left_out"], summary["run_dir"])


SHOWN_PER_REASON = 5  # lines printed per (task, split, lang, reason); errors.jsonl holds them all


def print_left_out(records: list[dict], languages: dict[str, dict]) -> None:
    """One `left out: ...` line (`note: ...` for a task's own rule) per record, at most SHOWN_PER_REASON per
    task, split, language and reason, then a line per (task, split) that lost languages whole."""
    from ..results.leftout import describe

    by_reason: dict[tuple, list[dict]] = {}
    for r in records:
        by_reason.setdefault((r["task"], r["split"], r["lang"], r["reason"]), []).append(r)
    for (task, split, lang, _), members in by_reason.items():
        word = "note" if members[0]["note"] else "left out"
        for r in members[:SHOWN_PER_REASON]:
            print(f"{word}: {r['error']}", file=sys.stderr)
        if len(members) > SHOWN_PER_REASON:
            rest = members[SHOWN_PER_REASON:]
            print(f"{word}: ... and {len(rest)} more of {task} {split} {lang} ({describe(rest)}), all in "
                  "errors.jsonl", file=sys.stderr)
    for key, langs in languages.items():
        if langs["lost"]:
            task, split = key.split("/")
            print(f"lost whole: {task} {split}: {len(langs['lost'])} of {len(langs['all'])} languages "
                  f"({', '.join(langs['lost'])})", file=sys.stderr)


def finish_left_out(records: list[dict], run_dir: str) -> int:
    """The run's last line: what was left out, counted by reason; exit 2 where bad data was (the work is
    done), 0 where only notes (a task's own rule) were."""
    from ..results.leftout import describe, total

    errors = [r for r in records if not r["note"]]
    notes = [r for r in records if r["note"]]
    noted = f"notes: {total(notes)} left out by the tasks' own rules ({describe(notes)})" if notes else ""
    if errors:
        print(f"xtp run: {total(errors)} left out ({describe(errors)}){'; ' + noted if noted else ''}: listed "
              f"above and in {run_dir}/errors.jsonl; the rest ran", file=sys.stderr)
        return USER_ERROR_EXIT
    if notes:
        print(f"xtp run: {noted}, in {run_dir}/errors.jsonl", file=sys.stderr)
    return 0


def _print_overview(report: dict) -> None:
    for key, table in report["tables"].items():
        upper = table.get("upper_bound_overall")
        print(f"{key}: vanilla {100 * table['vanilla_overall']:.1f}% (std {100 * table['vanilla_std']:.1f}), "
              + (f"upper bound {100 * upper:.1f}% (std {100 * table['upper_bound_std']:.1f})"
                 if upper is not None else ""))


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
    left_out = result.get("left_out") or {}
    if left_out.get("errors"):
        print(f"left out: {left_out['errors']} ({left_out['errors_by_reason']}): the report's Left out section and "
              f"{args.output.rstrip('/')}/{args.run_id}/errors.jsonl list them")
    shards = result["shards"]
    if shards["missing"]:
        print(f"partial: {shards['committed']} of {shards['planned']} planned shards committed, {shards['missing']} "
              "missing (the job may still be running)")
    print(f"report: {args.output.rstrip('/')}/{args.run_id}/report/report.html")
    return 0

"""`xtp nightly` (jobs/nightly.py): one night of grid searches, one per model, then each model's
trend across nights; exit 3 when a model's newest run regressed (`results/history.py`).

A night holds a lease on `<output>/_nightly` for as long as it runs (`lease.py`: refreshed,
given back on every exit, lapsing after `lease_ttl_s` if the night's driver is killed). A
RayCronJob creates a RayJob at every tick, even while the last night still runs: a night that
finds the lease held exits at once with one line naming the running night, and starts no work.
Each model's run is `<output>/<model name>/<model name>-<night>`, resumed if it exists.

A night that did not end well (a model failed: 1; refused, e.g. another night running or a bad flag: 2;
a regression: 3) posts one JSON message to the webhook in `XTP_ALERT_WEBHOOK` where it is set
(`alert.py`: night, models, status, what regressed, where the runs and reports are; no secret); a
failed post is one log line and leaves the exit status as it is.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time

from .. import storage
from ..errors import report
from .alert import WEBHOOK_ENV, alert, message
from .config import add_flags, load_config

log = logging.getLogger("xtp_ray")
NIGHT_LEASE = "_nightly"


class NightRunning(ValueError):
    """Another night holds the nightly lease."""


@dataclasses.dataclass
class Night:
    """What a night did, for its exit status and its alert."""
    status: int = 0
    regressed: list[dict] = dataclasses.field(default_factory=list)  # {"model", "table", "lang", "metric", ...}
    failed: list[dict] = dataclasses.field(default_factory=list)  # {"model", "error"}
    runs: dict[str, str] = dataclasses.field(default_factory=dict)  # model name -> its run (report under it)
    histories: dict[str, str] = dataclasses.field(default_factory=dict)  # model name -> its history page


def model_name(model: str) -> str:
    """The name a model's runs go under: its last path part (a hub id's repository, a directory's name;
    tiny:Arch:L gives tiny-Arch-L)."""
    from ..names import check_name

    return check_name("model name", model.rstrip("/").rsplit("/", 1)[-1].replace(":", "-"))


def run_night(base, models: list[str], night: str, threshold: float, alpha: float) -> Night:
    """Every model's grid search (and report), then its history, holding the night's lease; what it did
    (`Night.status`: the exit code). Refused (NightRunning) while another night holds it."""
    from . import lease

    uri = storage.join(base.output, NIGHT_LEASE)
    try:
        with lease.held(uri, base.lease_ttl_s, label=f"night {night} ({', '.join(models)})") as held:
            done = _run_models(base, models, night, threshold, alpha)
            if held.lost and not done.status:
                done.status = 1
                done.failed.append({"model": None, "error": f"the night's lease {uri} was lost while it ran"})
            return done
    except lease.LeaseHeldError:
        raise NightRunning(f"another night is still running: {lease.holder_of(uri) or 'it just ended'}; this "
                           f"night ({night}) starts no work") from None


def _run_models(base, models: list[str], night: str, threshold: float, alpha: float) -> Night:
    from ..errors import root_cause
    from ..results.aggregation import aggregate_run
    from ..results.history import REGRESSION_EXIT, write_history
    from .run import run_job

    done = Night()
    for model in models:
        name = model_name(model)
        config = base.replace(model=model, output=storage.join(base.output, name), run_id=f"{name}-{night}")
        done.runs[name] = storage.join(config.output, config.run_id)
        try:
            run_job(config)
            aggregate_run(config.output, config.run_id)
        except Exception as exc:  # noqa: BLE001 - one model's failure must not cost the others their night
            log.error("night %s, model %s failed: %s", night, model, exc)
            done.status = done.status or 1
            done.failed.append({"model": model, "error": root_cause(exc)})
            continue
        history = write_history(config.output, None, threshold, alpha)
        done.histories[name] = history["uri"]
        for r in history["regressions"]:
            print(f"regression: {name} {r['table']} {r['lang']} {r['metric']}: {100 * r['previous']:.1f} -> "
                  f"{100 * r['newest']:.1f}")
            done.regressed.append({"model": model, **{k: r[k] for k in ("table", "lang", "metric", "previous",
                                                                         "newest", "drop_points")}})
        if history["regressions"]:
            done.status = REGRESSION_EXIT
        print(f"night {night}: {name}: {config.output}/{config.run_id}, history {history['uri']}")
    return done


def nightly_parser() -> argparse.ArgumentParser:
    """`xtp nightly`'s flags: every run config field's, and the night's own."""
    parser = argparse.ArgumentParser(prog="xtp nightly", description="one night: a grid search per model, then "
                                     "each model's history; never two nights at once")
    add_flags(parser)
    parser.add_argument("--models", required=True, help="comma-separated models (hub ids or directories)")
    parser.add_argument("--night", help="the night's name (default: today's UTC date)")
    parser.add_argument("--threshold", type=float, default=2.0, help="points a drop must exceed (default 2)")
    parser.add_argument("--alpha", type=float, default=0.05, help="McNemar/Holm level (default 0.05)")
    parser.add_argument("--alert-always", action="store_true",
                        help=f"post to the webhook in ${WEBHOOK_ENV} after every night, not only after one that "
                             "failed or regressed (a sign of life)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one line per error")
    return parser


def nightly_main(argv: list[str] | None = None) -> int:
    args = nightly_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    night = args.night or time.strftime("%Y-%m-%d", time.gmtime())
    try:
        from ..names import check_name

        base = load_config(args)
        if not models:
            raise ValueError("--models is empty: name at least one model")
        check_name("--night", night)
        for model in models:
            model_name(model)
        done = run_night(base, models, night, args.threshold, args.alpha)
        error = None
    except Exception as exc:  # noqa: BLE001 - the one place errors become one line and an exit code
        from ..errors import root_cause

        done, error = Night(status=report("xtp nightly", exc, args.debug)), root_cause(exc)
    alert(message(night, models, done.status, done.regressed, done.failed, done.runs, done.histories, error),
          always=args.alert_always)
    return done.status


if __name__ == "__main__":
    sys.exit(nightly_main())

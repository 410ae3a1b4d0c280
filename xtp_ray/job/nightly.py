"""`xtp nightly` (jobs/nightly.py): one night of grid searches, one per model, then each model's
trend across nights; exit 3 when a model's newest run regressed (`results/history.py`).

A night holds a lease on `<output>/_nightly` for as long as it runs (`lease.py`: refreshed,
given back on every exit, lapsing after `lease_ttl_s` if the night's driver is killed). A
RayCronJob creates a RayJob at every tick, even while the last night still runs: a night that
finds the lease held exits at once with one line naming the running night, and starts no work.
Each model's run is `<output>/<model name>/<model name>-<night>`, resumed if it exists.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time

from .. import storage
from ..errors import report
from .config import add_flags, load_config

log = logging.getLogger("xtp_ray")
NIGHT_LEASE = "_nightly"


class NightRunning(ValueError):
    """Another night holds the nightly lease."""


def model_name(model: str) -> str:
    """The name a model's runs go under: its last path part (a hub id's repository, a directory's name;
    tiny:Arch:L gives tiny-Arch-L)."""
    from ..names import check_name

    return check_name("model name", model.rstrip("/").rsplit("/", 1)[-1].replace(":", "-"))


def run_night(base, models: list[str], night: str, threshold: float, alpha: float) -> int:
    """Every model's grid search (and report), then its history, holding the night's lease; the exit
    code. Refused (NightRunning) while another night holds it."""
    from . import lease

    uri = storage.join(base.output, NIGHT_LEASE)
    try:
        with lease.held(uri, base.lease_ttl_s, label=f"night {night} ({', '.join(models)})") as held:
            status = _run_models(base, models, night, threshold, alpha)
            return status or (1 if held.lost else 0)
    except lease.LeaseHeldError:
        raise NightRunning(f"another night is still running: {lease.holder_of(uri) or 'it just ended'}; this "
                           f"night ({night}) starts no work") from None


def _run_models(base, models: list[str], night: str, threshold: float, alpha: float) -> int:
    from ..results.aggregation import aggregate_run
    from ..results.history import REGRESSION_EXIT, write_history
    from .pipeline import run_job

    status = 0
    for model in models:
        name = model_name(model)
        config = dataclasses.replace(base, model=model, output=storage.join(base.output, name),
                                     run_id=f"{name}-{night}")
        try:
            run_job(config)
            aggregate_run(config.output, config.run_id)
        except Exception as exc:  # noqa: BLE001 - one model's failure must not cost the others their night
            log.error("night %s, model %s failed: %s", night, model, exc)
            status = status or 1
            continue
        history = write_history(config.output, None, threshold, alpha)
        for r in history["regressions"]:
            print(f"regression: {name} {r['table']} {r['lang']} {r['metric']}: {100 * r['previous']:.1f} -> "
                  f"{100 * r['newest']:.1f}")
        if history["regressions"]:
            status = REGRESSION_EXIT
        print(f"night {night}: {name}: {config.output}/{config.run_id}, history {history['uri']}")
    return status


def nightly_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xtp nightly", description="one night: a grid search per model, then "
                                     "each model's history; never two nights at once")
    add_flags(parser)
    parser.add_argument("--models", required=True, help="comma-separated models (hub ids or directories)")
    parser.add_argument("--night", help="the night's name (default: today's UTC date)")
    parser.add_argument("--threshold", type=float, default=2.0, help="points a drop must exceed (default 2)")
    parser.add_argument("--alpha", type=float, default=0.05, help="McNemar/Holm level (default 0.05)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one line per error")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        from ..names import check_name

        base = load_config(args)
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        if not models:
            raise ValueError("--models is empty: name at least one model")
        night = check_name("--night", args.night or time.strftime("%Y-%m-%d", time.gmtime()))
        for model in models:
            model_name(model)
        return run_night(base, models, night, args.threshold, args.alpha)
    except Exception as exc:  # noqa: BLE001 - the one place errors become one line and an exit code
        return report("xtp nightly", exc, args.debug)


if __name__ == "__main__":
    sys.exit(nightly_main())

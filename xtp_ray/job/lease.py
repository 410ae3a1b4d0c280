"""One driver per run: a lease object under the run, taken before any work is planned.

`<output>/<run_id>/lease.json` names the holder (host, process, start time) and when
it expires. The holder refreshes it every third of its time to live; a killed
driver stops refreshing, so its lease lapses. Taking is atomic on both stores
(`storage`'s conditional writes): taking is a create where nothing is; a refresh, or a
take-over of an expired lease, replaces the version read, so of two drivers racing for
one lease exactly one wins.

Expiry is judged by the reader's clock against the holder's `expires`; clocks of
drivers are assumed to agree to well within the time to live.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .. import storage

log = logging.getLogger("xtp_ray")
LEASE_NAME = "lease.json"


class LeaseHeldError(RuntimeError):
    """Another driver holds the run's lease."""


@dataclass
class Lease:
    uri: str
    record: dict
    version: str | None = None  # `storage`'s version of what we last wrote
    lost: bool = False


def _now() -> float:
    return time.time()


def _record(ttl_s: float, started: float | None = None, label: str | None = None) -> dict:
    now = _now()
    return {"holder": {"host": socket.gethostname(), "pid": os.getpid()}, **({"label": label} if label else {}),
            "token": uuid.uuid4().hex, "started": started or now, "refreshed": now,
            "expires": now + ttl_s, "ttl_s": ttl_s}


def describe(record: dict) -> str:
    holder = record.get("holder", {})
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(record.get("started", 0)))
    left = record.get("expires", 0) - _now()
    state = f"expires in {left:.0f} s" if left > 0 else f"expired {-left:.0f} s ago"
    what = f"{record['label']} on " if record.get("label") else ""
    return f"{what}host {holder.get('host')!r}, pid {holder.get('pid')}, started {started} ({state})"


def _read(uri: str) -> tuple[dict, str] | None:
    """(the lease record, its version), or None where nobody holds the lease."""
    current = storage.read_versioned(uri)
    return (json.loads(current[0]), current[1]) if current else None


# ---------------------------------------------------------------- taking, keeping, giving back

def acquire(run_uri: str, ttl_s: float, take_over: bool = False, poll_s: float = 1.0,
            label: str | None = None) -> Lease:
    """Take the run's lease, or raise LeaseHeldError naming its holder.

    A lease whose holder stopped refreshing it (expired) is taken over. A live one
    is refused; with take_over, the driver waits until it expires (at most its time
    to live, as long as nobody refreshes it) and takes it then. label: what holds it (named to
    whoever is refused).
    """
    uri = storage.join(run_uri, LEASE_NAME)
    deadline = None
    while True:
        record = _record(ttl_s, label=label)
        version = storage.create_exclusive(uri, json.dumps(record))
        if version is not None:
            return Lease(uri, record, version)
        current = _read(uri)
        if current is None:  # released between our create and read: try again
            continue
        held, seen = current
        if held.get("expires", 0) <= _now():
            version = storage.replace_versioned(uri, json.dumps(record), seen)
            if version is not None:
                log.warning("took over the expired lease of run %s (%s)", run_uri, describe(held))
                return Lease(uri, record, version)
            continue  # someone else changed it first: look again
        if not take_over:
            raise LeaseHeldError(
                f"run {run_uri} is being run by another driver: {describe(held)}. Wait for it to finish, or "
                f"pass --take-over to take the run once that lease expires (a killed driver's lease lapses "
                f"{held.get('ttl_s', ttl_s):.0f} s after its last refresh)")
        if deadline is None:
            deadline = held["expires"] + poll_s
            log.warning("waiting for the lease of run %s to expire (%s)", run_uri, describe(held))
        if held.get("expires", 0) > deadline:  # refreshed while we waited: its holder is alive
            raise LeaseHeldError(f"run {run_uri}: the lease holder is alive and refreshing it ({describe(held)}); "
                                 "not taking it over")
        time.sleep(max(0.05, min(poll_s, held["expires"] - _now() + 0.05)))


def holder_of(run_uri: str) -> str | None:
    """Who holds the run's lease (`describe`), or None where nobody does."""
    current = _read(storage.join(run_uri, LEASE_NAME))
    return describe(current[0]) if current else None


def refresh(lease: Lease) -> bool:
    """Push the expiry forward; False (and lease.lost) if someone else holds it now."""
    record = {**lease.record, "refreshed": _now(), "expires": _now() + lease.record["ttl_s"]}
    version = storage.replace_versioned(lease.uri, json.dumps(record), lease.version)
    if version is None:
        lease.lost = True
        return False
    lease.record, lease.version = record, version
    return True


def release(lease: Lease) -> None:
    storage.delete_versioned(lease.uri, lease.version)


@contextmanager
def held(run_uri: str, ttl_s: float, take_over: bool = False, label: str | None = None) -> Iterator[Lease]:
    """Hold the run's lease for the block: refreshed in a thread, given back on every exit."""
    lease = acquire(run_uri, ttl_s, take_over, label=label)
    stop = threading.Event()

    def keep():
        while not stop.wait(ttl_s / 3):
            try:
                if not refresh(lease):
                    log.error("lost the lease of %s to another driver", lease.uri)
                    return
            except Exception as exc:  # a store hiccup: try again next period, the lease has slack
                log.warning("lease refresh failed (%s); retrying", type(exc).__name__)

    thread = threading.Thread(target=keep, name="xtp-lease", daemon=True)
    thread.start()
    try:
        yield lease
    finally:
        stop.set()
        thread.join(timeout=5)
        if not lease.lost:
            try:
                release(lease)
            except Exception as exc:
                log.warning("could not give back the lease of %s (%s); it lapses in %.0f s", lease.uri,
                            type(exc).__name__, ttl_s)

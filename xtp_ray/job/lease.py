"""One driver per run: a lease object under the run, taken before any work is planned.

`<output>/<run_id>/lease.json` names the holder (host, process, start time) and when
it expires. The holder refreshes it every third of its time to live; a killed
driver stops refreshing, so its lease lapses. Taking is atomic on both stores:
- s3://: a create-if-absent put (`If-None-Match: *`); a refresh or a take-over of
  an expired lease is a put conditional on the ETag read (`If-Match`), so of two
  drivers racing for one lease exactly one wins;
- a local path: an exclusive create (O_EXCL); a take-over first renames the expired
  file aside, which only one process can do.

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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .. import storage

log = logging.getLogger("xtp_ray")
LEASE_NAME = "lease.json"


class LeaseHeldError(RuntimeError):
    """Another driver holds the run's lease."""


@dataclass
class Lease:
    uri: str
    record: dict
    version: str | None = None  # the S3 ETag of what we last wrote
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


# ---------------------------------------------------------------- the two stores

class _LocalStore:
    """The lease file on a local (or shared POSIX) filesystem. Every change holds an exclusive `flock` on
    a sibling lock file and lands with one atomic `os.replace`, so the lease file never goes missing
    while it is held: a competitor can never create it in the middle of a refresh."""

    def __init__(self, uri: str):
        self.path = Path(storage.resolve(uri)[1])

    @contextmanager
    def _locked(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def read(self) -> tuple[dict, str] | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        return json.loads(text), text

    def _write(self, record: dict) -> str:
        text = json.dumps(record)
        tmp = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.path)
        return text

    def create(self, record: dict) -> str | None:
        with self._locked():
            return None if self.path.exists() else self._write(record)

    def replace(self, record: dict, expected: str) -> str | None:
        """Swap what we read (`expected`) for record; None if it changed meanwhile."""
        with self._locked():
            current = self.read()
            if current is None or current[1] != expected:
                return None
            return self._write(record)

    def delete(self, expected: str) -> None:
        with self._locked():
            current = self.read()
            if current and current[1] == expected:
                self.path.unlink(missing_ok=True)


class _S3Store:
    def __init__(self, uri: str):
        import boto3
        from botocore.config import Config

        bucket_key = uri[len("s3://"):]
        self.bucket, _, self.key = bucket_key.partition("/")
        timeout = float(os.environ.get("XTP_S3_TIMEOUT", "30"))
        self.client = boto3.client("s3", endpoint_url=storage.s3_endpoint(),
                                   config=Config(connect_timeout=timeout, read_timeout=timeout,
                                                 retries={"max_attempts": 3}))

    @staticmethod
    def _refused(exc) -> bool:
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)

    def read(self) -> tuple[dict, str] | None:
        from botocore.exceptions import ClientError

        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return json.loads(got["Body"].read()), got["ETag"]

    def _put(self, record: dict, **condition) -> str | None:
        from botocore.exceptions import ClientError

        try:
            put = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=json.dumps(record).encode(),
                                         ContentType="application/json", **condition)
        except ClientError as exc:
            if self._refused(exc):
                return None
            raise
        return put["ETag"]

    def create(self, record: dict) -> str | None:
        return self._put(record, IfNoneMatch="*")

    def replace(self, record: dict, expected: str) -> str | None:
        return self._put(record, IfMatch=expected)

    def delete(self, expected: str) -> None:
        current = self.read()
        if current and current[1] == expected:
            self.client.delete_object(Bucket=self.bucket, Key=self.key)


def _store(uri: str):
    return _S3Store(uri) if str(uri).startswith("s3://") else _LocalStore(uri)


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
    store = _store(uri)
    deadline = None
    while True:
        record = _record(ttl_s, label=label)
        version = store.create(record)
        if version is not None:
            return Lease(uri, record, version)
        current = store.read()
        if current is None:  # released between our create and read: try again
            continue
        held, seen = current
        if held.get("expires", 0) <= _now():
            version = store.replace(record, seen)
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
    current = _store(storage.join(run_uri, LEASE_NAME)).read()
    return describe(current[0]) if current else None


def refresh(lease: Lease, store=None) -> bool:
    """Push the expiry forward; False (and lease.lost) if someone else holds it now."""
    store = store or _store(lease.uri)
    record = {**lease.record, "refreshed": _now(), "expires": _now() + lease.record["ttl_s"]}
    version = store.replace(record, lease.version)
    if version is None:
        lease.lost = True
        return False
    lease.record, lease.version = record, version
    return True


def release(lease: Lease) -> None:
    _store(lease.uri).delete(lease.version)


@contextmanager
def held(run_uri: str, ttl_s: float, take_over: bool = False, label: str | None = None) -> Iterator[Lease]:
    """Hold the run's lease for the block: refreshed in a thread, given back on every exit."""
    lease = acquire(run_uri, ttl_s, take_over, label=label)
    stop = threading.Event()

    def keep():
        store = _store(lease.uri)
        while not stop.wait(ttl_s / 3):
            try:
                if not refresh(lease, store):
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

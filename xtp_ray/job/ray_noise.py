"""Dropping one known, harmless line from the process's stderr while Ray Data runs.

Ray Data's actor pool hands its actors their constructor arguments (the data context
and the map transformer) as object references, and restarts lost actors
(max_restarts=-1), so Ray's core worker logs, from C++ straight to file descriptor 2,
an error-level line per actor: "... has constructor arguments in the object store and
max_restarts > 0" (ray-project/ray#53727). The driver holds those references for the
whole run, so a restarted actor always finds them: the line is noise on every run.
Python's `logging` cannot reach it; this filters fd 2 itself, line by line, and passes
everything else through unchanged.
"""
from __future__ import annotations

import os
import re
import sys
import threading
from contextlib import contextmanager

NOISE = re.compile(rb"has constructor arguments in the object store and max_restarts > 0")


@contextmanager
def without_noise(pattern: re.Pattern = NOISE):
    """While inside, lines written to fd 2 that match `pattern` are dropped; the rest pass through."""
    try:
        sys.stderr.flush()
        original = os.dup(2)
    except (OSError, ValueError):  # no usable stderr: nothing to filter
        yield
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump():
        pending = b""
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                out = b"".join(line + b"\n" for line in lines if not pattern.search(line))
                if out:
                    os.write(original, out)
        if pending and not pattern.search(pending):
            os.write(original, pending)

    thread = threading.Thread(target=pump, name="xtp-stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last write end held by fd 2: the pump drains and ends
        thread.join(timeout=5)
        os.close(original)

"""What a user sees when something goes wrong: one line, the root cause first.

Ray wraps an exception raised in an actor (`RayTaskError`, whose `cause` is the
original) and transformers chains its own; the line a user needs is the innermost
message. `report` turns any exception into that line and an exit code: 2 for a
user's mistake (bad flag, config, data, path, permissions, unreachable storage),
1 for anything else (a model that fails to load in an actor, a bug); `--debug` shows the traceback instead.
"""
from __future__ import annotations

import re
import sys

USER_ERROR_EXIT = 2


def chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes, outermost first (Ray's `cause`, then `__cause__`/`__context__`)."""
    seen, out = set(), []
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out.append(exc)
        context = None if exc.__suppress_context__ else exc.__context__  # `raise ... from None` ends it
        exc = getattr(exc, "cause", None) or exc.__cause__ or context
    return out


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def root_cause(exc: BaseException) -> str:
    """The innermost informative message on one line. Marker exceptions without a message (Ray Data's
    `SystemException`) are passed over; a message that embeds a formatted traceback (Ray's
    `ActorDiedError` for a failed actor constructor) gives its last line, the original `Type: message`."""
    links = chain(exc)
    informative = [e for e in links if str(e).strip()]
    last = informative[-1] if informative else links[-1]
    text = ANSI.sub("", str(last)).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "Traceback (most recent call last)" in text or re.search(r'^\s*File "', text, re.MULTILINE):
        return lines[-1]
    message = " ".join(lines)
    if type(last).__name__ in ("ValueError", "ConfigError") or not message:
        return message or type(last).__name__
    return f"{type(last).__name__}: {message}"


USER_ERRORS = (ValueError, OSError, ImportError, KeyboardInterrupt)
NAMED_USER_ERRORS = ("LeaseHeldError", "ShardWriteError")  # by name: importing them would pull in pyarrow


def is_user_error(exc: BaseException) -> bool:
    last = chain(exc)[-1]
    return isinstance(last, USER_ERRORS) or type(last).__name__ in NAMED_USER_ERRORS


def report(command: str, exc: BaseException, debug: bool = False) -> int:
    """Print one line for `exc` (or the traceback under --debug); the exit code."""
    if debug:
        import traceback

        traceback.print_exception(exc)
    elif is_user_error(exc):
        print(f"{command}: error: {root_cause(exc)}", file=sys.stderr)
    else:
        print(f"{command}: error: {root_cause(exc)} (rerun with --debug for the traceback)", file=sys.stderr)
    return USER_ERROR_EXIT if is_user_error(exc) else 1

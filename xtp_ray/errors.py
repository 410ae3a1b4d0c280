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
FRAME = re.compile(r'^\s*File "', re.MULTILINE)
CHAINED = re.compile(r"\n\s*(The above exception was the direct cause of the following exception:|"
                     r"During handling of the above exception, another exception occurred:)\s*\n")


def root_cause(exc: BaseException) -> str:
    """The innermost informative message on one line.

    Ray hands an actor's exception to the driver with the whole chain formatted into its message (Python
    prints the innermost cause first, then "The above exception was the direct cause ..."): the root
    cause is the last line before the first such marker. Otherwise it is the innermost exception with a
    message (marker exceptions without one, like Ray Data's `SystemException`, are passed over)."""
    links = chain(exc)
    for link in links:
        text = ANSI.sub("", str(link))
        if FRAME.search(text):
            first = CHAINED.split(text)[0]
            lines = [line.strip() for line in first.splitlines() if line.strip()]
            if lines:
                return lines[-1]
    informative = [e for e in links if str(e).strip()]
    last = informative[-1] if informative else links[-1]
    message = " ".join(line.strip() for line in ANSI.sub("", str(last)).splitlines() if line.strip())
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
    user = is_user_error(exc)
    if debug:
        import traceback

        traceback.print_exception(exc)
    else:
        hint = "" if user else " (rerun with --debug for the traceback)"
        print(f"{command}: error: {root_cause(exc)}{hint}", file=sys.stderr)
    return USER_ERROR_EXIT if user else 1

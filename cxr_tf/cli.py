"""What the command lines share: how one ends on bad input (a clear message, exit status 2)."""

from __future__ import annotations

import sys

BAD_INPUT = 2  # exit status of every cxr_tf command for bad input; 1 is "ran, some items failed"


def user_errors() -> tuple[type[Exception], ...]:
    """What a training command reports as one line: bad values and files, a missing
    dependency, a distribution that cannot be set up here."""
    from cxr_tf.runtime import RuntimeErrorWithHint

    return (ValueError, FileNotFoundError, ImportError, RuntimeErrorWithHint)


def fail(message) -> int:
    """Print `error: <message>` to stderr and return BAD_INPUT, for `return fail(err)`."""
    print(f"error: {message}", file=sys.stderr)
    return BAD_INPUT

"""Errors a user can cause: `UserError` carries one line that names the file and the fix;
`run_main` turns it into that line on stderr and exit status 1, also when it was raised inside a
DataLoader worker (PyTorch re-raises it in the main process with the worker's traceback glued in
front of the message), and Ctrl-C into one line and exit 130."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence


def and_more(items: Sequence, shown: int = 1) -> str:
    """The first `shown` items and a count of the rest, for messages about many files or names:
    "a (and 3 more)", "a, b, c (and 2 more)"."""
    listed = ", ".join(str(item) for item in items[:shown])
    return listed + (f" (and {len(items) - shown} more)" if len(items) > shown else "")


class UserError(Exception):
    """A problem with the user's input: one line, naming the file and the fix."""


def user_message(error: UserError) -> str:
    """The user's one line, without the traceback a DataLoader worker prepends."""
    return str(error).strip().splitlines()[-1].rsplit("UserError: ", 1)[-1]


def run_main(main: Callable[[], object]) -> None:
    """Run a script's `main`: a UserError becomes one line on stderr and exit 1,
    Ctrl-C becomes one line (the KeyboardInterrupt's message, if any) and exit 130."""
    try:
        main()
    except UserError as error:
        sys.exit(f"error: {user_message(error)}")
    except KeyboardInterrupt as interrupt:
        # A script may re-raise Ctrl-C with one line saying how to go on (train_cpn: how to resume).
        print(str(interrupt) or "interrupted", file=sys.stderr)
        sys.exit(130)

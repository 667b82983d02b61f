"""The one error reporter of the ``findlit`` command, and its exit codes.

Every subcommand runs through :func:`run_reported` (the dispatcher, :func:`findlit.cli.main`, calls
it once). A :class:`~findlit.errors.FindlitError` (the user's to fix: a config key, a data file, a
checkpoint, a cache, an earlier output) is printed as one line, ``findlit: <label>: <message>``,
on stderr, and its ``exit_code`` returned. Anything else is a bug and keeps its traceback.

Exit codes:

- :data:`SUCCESS` (0): the command did what it was asked;
- :data:`PROBLEMS_FOUND` (1): ``findlit data check`` or ``findlit cache`` ran to the end and found
  problems in the data, which they listed (a report, not an error);
- :data:`USER_ERROR` (2): a :class:`~findlit.errors.FindlitError`, or the usage of a subcommand.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

from findlit.errors import FindlitError

SUCCESS = 0
"""The command did what it was asked."""

PROBLEMS_FOUND = 1
"""``data check`` or ``cache`` ran to the end and listed problems in the data."""

USER_ERROR = FindlitError.exit_code
"""A config key, a data file, a checkpoint, a cache or an earlier output to fix (or bad usage)."""


def error_line(error: FindlitError) -> str:
    """``findlit: <label>: <message>``, the line the command prints for ``error``."""
    return f"findlit: {error.label}: {error}"


def report(error: FindlitError, stream: TextIO | None = None) -> int:
    """Print ``error`` as its one line on ``stream`` (default stderr); return its exit code."""
    print(error_line(error), file=sys.stderr if stream is None else stream, flush=True)
    return error.exit_code


def run_reported(command: Callable[[], int]) -> int:
    """Run ``command`` and return its exit code, or report the FindlitError that ends it.

    Lightning's ``Trainer.fit`` (and ``validate``, ``test``, ``predict``) re-raises the original
    exception after its teardown, and torch re-creates a DataLoader worker's exception as its own
    type (see :mod:`findlit.errors`), so our errors arrive here as themselves, wherever raised.
    """
    try:
        return command()
    except FindlitError as error:
        return report(error)

"""The errors a user can fix: each carries one line saying what is wrong, where, and how to fix it.

Every command line runs its work through `report`, which prints `error: <message>` for any
`UserError` and exits with code 2; every other exception is a bug and keeps its traceback.
"""

import sys
from collections.abc import Callable


class UserError(Exception):
    """A problem with the user's params, files, data or servers; the message is one line."""


class ParamsError(UserError, ValueError):
    """A params, sweep or deployments file that cannot be used."""


class CorruptDataError(UserError):
    """A stored generation does not match its recorded hash."""


class InputUnavailableError(UserError):
    """An input the study needs (a dataset, a weights file, an upstream stage's output, a server) is missing."""


class LockedError(UserError):
    """Another run holds the experiment's lock."""


class ReportError(UserError):
    """An unknown study, or a study without a finished execution with seed runs in MLflow."""


def report(run: Callable[[], object]) -> int:
    """Exit code of `run()`: 0, or 2 after one line on stderr for an error the user can fix."""
    try:
        run()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0

"""The errors a user can fix: each carries one line saying what is wrong, where, and how to fix it.

Every command line runs its work through `report`, which prints `error: <message>` for any
`UserError` or for a file access the system refuses (permission, read-only file system, full
disk, quota) and exits with code 2, or with 130 after Ctrl-C; every other exception is a bug and keeps
its traceback. With AUTOPHAGY_DEBUG=1 the tracebacks of the errors above are shown too.
"""

import errno
import os
import sys
from collections.abc import Callable

DEBUG = "AUTOPHAGY_DEBUG"  # set to 1 for tracebacks of the errors a user can fix
REFUSED_WRITES = {errno.EACCES: "make it writable", errno.EPERM: "make it writable",
                  errno.EROFS: "run from a writable folder", errno.ENOSPC: "free disk space",
                  errno.EDQUOT: "free space within your quota"}


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


class RemoteRunError(UserError):
    """A flow run on a work pool did not complete; its traceback is in its logs, on the Prefect server."""


class ReportError(UserError):
    """An unknown study, or a study without a finished execution with seed values in MLflow."""


def debugging() -> bool:
    return os.environ.get(DEBUG, "") not in ("", "0")


def report(run: Callable[[], object]) -> int:
    """Exit code of `run()`: 0; 2 after one line on stderr for an error the user can fix; 130 after Ctrl-C
    (also when the interrupt broke the clean-up that followed it)."""
    try:
        run()
    except BaseException as exc:
        if debugging():
            raise
        if _interrupted(exc):
            print("error: interrupted; rerun the same command to resume at the first unfinished generation",
                  file=sys.stderr)
            return 130
        fix = REFUSED_WRITES.get(getattr(exc, "errno", None)) if isinstance(exc, OSError) else None
        if not (isinstance(exc, UserError) or fix):
            raise
        print(f"error: {exc if isinstance(exc, UserError) else _refused(exc, fix)}", file=sys.stderr)
        return 2
    return 0


def _interrupted(exc: BaseException | None) -> bool:
    """Whether `exc` is a KeyboardInterrupt or was raised while handling one."""
    while exc is not None:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__context__
    return False


def _refused(exc: OSError, fix: str) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror}; {fix}, then rerun the same command to resume"

"""One run at a time per experiment: a lock file that names its holder.

`.locks/<experiment>.lock` is created exclusively (O_CREAT | O_EXCL) by the run that starts
first and holds its Prefect flow run name and id, host and process id. A second run of the same
experiment in the same repository stops with `LockedError` naming the first; a lock left by a
process that no longer exists on this host is stale and taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from tasks.errors import LockedError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _take(path: Path, holder: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        json.dump(holder, handle)
    return True


@contextlib.contextmanager
def experiment_lock(root: Path, experiment: str, run: str) -> Iterator[Path]:
    """Hold `.locks/<experiment>.lock` for the duration; LockedError if a live run holds it."""
    path = root / ".locks" / f"{experiment}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = {"run": run, "host": socket.gethostname(), "pid": os.getpid(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    while not _take(path, holder):
        try:
            other = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being written or just removed: try again
        if other.get("host") == holder["host"] and not _alive(int(other.get("pid", -1))):
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        raise LockedError(f"{experiment} is locked by run {other.get('run')} (pid {other.get('pid')} on "
                          f"{other.get('host')}, since {other.get('started')}); wait for it to finish, or "
                          f"delete {path} if that run is dead")
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)

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


def alive(pid: int) -> bool:
    """Whether process `pid` exists on this host."""
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


def _holder(path: Path) -> dict | None:
    """Who holds the lock at `path`, if anyone; a stale lock (its process gone from this host) is removed.
    A lock file still unreadable after a second (its writer killed mid-write) names no holder."""
    for _ in range(50):
        try:
            other = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            time.sleep(0.02)  # being written: read again
            continue
        if other.get("host") == socket.gethostname() and not alive(int(other.get("pid", -1))):
            path.unlink(missing_ok=True)
            return None
        return other
    return {"run": "unknown (unreadable lock file)"}


def _locked(experiment: str, other: dict, path: Path) -> LockedError:
    return LockedError(f"{experiment} is locked by run {other.get('run')} (pid {other.get('pid')} on "
                       f"{other.get('host')}, since {other.get('started')}); wait for it to finish, or "
                       f"delete {path} if that run is dead")


def lock_path(root: Path, experiment: str) -> Path:
    return root / ".locks" / f"{experiment}.lock"


def check_unlocked(root: Path, experiment: str) -> None:
    """LockedError if a live run holds the experiment's lock: a command line checks before its flow starts."""
    path = lock_path(root, experiment)
    if (other := _holder(path)) is not None:
        raise _locked(experiment, other, path)


@contextlib.contextmanager
def experiment_lock(root: Path, experiment: str, run: str) -> Iterator[Path]:
    """Hold `.locks/<experiment>.lock` for the duration; LockedError if a live run holds it."""
    path = lock_path(root, experiment)
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = {"run": run, "host": socket.gethostname(), "pid": os.getpid(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    while not _take(path, holder):
        if (other := _holder(path)) is not None:
            raise _locked(experiment, other, path)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)

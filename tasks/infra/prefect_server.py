"""A temporary Prefect API server that dies with the process that started it.

Without PREFECT_API_URL, Prefect starts its own temporary server (`prefect.server.api.server.SubprocessASGIServer`)
and stops it at interpreter exit, so a process killed with SIGKILL leaves it running. `prefect_api` starts the
same uvicorn command instead, in a child the kernel kills when its parent dies (Linux prctl PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO

import httpx
import prefect
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.settings import (PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
                              get_current_settings, temporary_settings)

from tasks.errors import InputUnavailableError

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_SECONDS = 5.0  # between SIGTERM and SIGKILL when the server stops, and for draining logs and events to it
SETTING = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.name
CAUSE = re.compile(r"\| ERROR +\| [\w.]+ - (?!Traceback)(.+)|^([A-Za-z_][\w.]*: .+)")  # a log record, an exception


def _die_with(parent: int) -> Callable[[], None]:
    """A `preexec_fn` that has the child killed (SIGKILL) when `parent` dies, even if it died during the fork."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork

    def preexec() -> None:
        if prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(port: int, stderr: IO[bytes]) -> subprocess.Popen:
    """Prefect's temporary-server command (`SubprocessASGIServer._run_uvicorn_command`) on `port`."""
    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
               "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "error", "--lifespan", "on"]
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
           **get_current_settings().to_environment_variables(exclude_unset=True)}
    return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                            preexec_fn=_die_with(os.getpid()))


def _cause(stderr: IO[bytes]) -> str:
    """The server's first error message or exception line (else its last line) on `stderr`."""
    stderr.seek(0)
    lines = [line.strip() for line in stderr.read().decode(errors="replace").splitlines() if line.strip()]
    causes = (match.group(1) or match.group(2) for match in map(CAUSE.search, lines) if match)
    return next(causes, lines[-1] if lines else "")[:300]


def _wait_until_up(server: subprocess.Popen, url: str, stderr: IO[bytes]) -> None:
    """Return once GET `url`/health answers 200; InputUnavailableError if the server exits or the time runs out."""
    timeout = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
    deadline = time.monotonic() + timeout
    with httpx.Client(trust_env=False, timeout=1.0) as client:
        while server.poll() is None and time.monotonic() < deadline:
            try:
                if client.get(f"{url}/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    if server.poll() is None:
        what, fix = f"did not answer GET /health within {timeout} s", f"raise {SETTING}"
    else:
        what, fix = f"exited with code {server.returncode}", "fix that"
    cause = _cause(stderr)
    raise InputUnavailableError(f"the temporary Prefect server at {url} (python -m uvicorn) {what}"
                                f"{f' ({cause})' if cause else ''}; {fix}, or start a server (prefect server start) "
                                "and set PREFECT_API_URL")


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after STOP_SECONDS; reaped either way."""
    server.terminate()
    try:
        server.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


@contextmanager
def temporary_server() -> Iterator[str]:
    """A Prefect API server on a free port of 127.0.0.1 for the block, killed by the kernel if this process dies;
    yields its API URL. Waits PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS for it to answer. Linux only; the
    kernel also kills it when the calling thread ends, so call it from the main thread."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    with tempfile.TemporaryFile() as stderr:
        server = _start(port, stderr)
        try:
            _wait_until_up(server, url, stderr)
            yield url
        finally:
            _stop(server)


@contextmanager
def prefect_api() -> Iterator[None]:
    """Run the block against PREFECT_API_URL when it is set, else against a `temporary_server` (off Linux, against
    Prefect's own temporary server, which outlives a killed process). Logs and events still queued at the end of
    the block are sent before the temporary server stops."""
    if PREFECT_API_URL.value() or sys.platform != "linux":
        yield
        return
    with temporary_server() as url, temporary_settings(updates={PREFECT_API_URL: url}):
        try:
            yield
        finally:
            for worker in (APILogWorker, EventsWorker):
                worker.drain_all(timeout=STOP_SECONDS)

"""Prefect API servers that die with the process that started them.

Without PREFECT_API_URL, Prefect starts its own temporary server (`prefect.server.api.server.SubprocessASGIServer`)
and stops it at interpreter exit, so a process killed with SIGKILL leaves it running. `prefect_api` starts the
same uvicorn command instead, in a child the kernel kills when its parent dies (Linux prctl PR_SET_PDEATHSIG).

`python -m tasks.infra.prefect_server -- COMMAND ...` runs COMMAND (e.g. `dvc repro`, as `make run` does)
against one server for all its stages: the project's own, its state in .prefect/ and its UI on
127.0.0.1:4200 (--port), so the UI shows this run and every earlier one; with PREFECT_API_URL set, against
that server instead.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path
from typing import IO

import httpx
import prefect
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.settings import (PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
                              get_current_settings, temporary_settings)

from tasks.errors import InputUnavailableError, report

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_SECONDS = 5.0  # between SIGTERM and SIGKILL when the server stops, and for draining logs and events to it
SETTING = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.name
CAUSE = re.compile(r"\| ERROR +\| [\w.]+ - (?!Traceback)(.+)|^([A-Za-z_][\w.]*: .+)")  # a log record, an exception


def die_with(parent: int, stop_signal: int = signal.SIGKILL) -> Callable[[], None]:
    """A `preexec_fn` that has the kernel send the child `stop_signal` (default SIGKILL) when `parent` dies, even
    if it died during the fork."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork

    def preexec() -> None:
        if prctl(PR_SET_PDEATHSIG, stop_signal) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(port: int, stderr: IO[bytes], home: Path | None = None) -> subprocess.Popen:
    """Prefect's temporary-server command (`SubprocessASGIServer._run_uvicorn_command`) on `port`; with `home`, a
    lasting server instead: its database in `home`, its UI and background services on. In a session of its own:
    a Ctrl-C in the terminal reaches its clients, which report it to the server before it is stopped."""
    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
               "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "error", "--lifespan", "on"]
    kind = ({"PREFECT_HOME": str(home.resolve()), "PREFECT_UI_ENABLED": "1"} if home else
            {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"})
    env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True), **kind}
    return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                            start_new_session=True, preexec_fn=die_with(os.getpid()))


def _cause(stderr: IO[bytes]) -> str:
    """The server's first error message or exception line (else its last line) on `stderr`."""
    stderr.seek(0)
    lines = [line.strip() for line in stderr.read().decode(errors="replace").splitlines() if line.strip()]
    causes = (match.group(1) or match.group(2) for match in map(CAUSE.search, lines) if match)
    return next(causes, lines[-1] if lines else "")[:300]


def _wait_until_up(server: subprocess.Popen, url: str, stderr: IO[bytes], name: str) -> None:
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
    raise InputUnavailableError(f"the {name} at {url} (python -m uvicorn) {what}"
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
def temporary_server(port: int | None = None, home: Path | None = None) -> Iterator[str]:
    """A Prefect API server on `port` (default: a free one) of 127.0.0.1 for the block, killed by the kernel if this
    process dies; yields its API URL. With `home`, its database and UI are those of a lasting server (`_start`).
    Waits PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS for it to answer. Linux only; the kernel also kills it
    when the calling thread ends, so call it from the main thread."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/api"
    with tempfile.TemporaryFile() as stderr:
        server = _start(port, stderr, home)
        try:
            _wait_until_up(server, url, stderr, f"Prefect server of {home}" if home else "temporary Prefect server")
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


def port_free(port: int) -> bool:
    """Whether a server can listen on `port` of 127.0.0.1 (as uvicorn binds: a closed connection's TIME_WAIT does
    not count)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def run_with_server(command: list[str], home: Path, port: int) -> int:
    """Run `command` against PREFECT_API_URL when set, else against the project's server (state in `home`, UI on
    127.0.0.1:`port`) started for it and stopped once the command has ended (a Ctrl-C is the command's to handle);
    its exit code. InputUnavailableError when `port` is taken."""
    if PREFECT_API_URL.value():
        return subprocess.call(command)
    if not port_free(port):
        raise InputUnavailableError(f"port {port} of 127.0.0.1 is in use (a Prefect server already running?); "
                                    f"set PREFECT_API_URL=http://127.0.0.1:{port}/api to use it, or choose another "
                                    "port with PREFECT_PORT")
    home.mkdir(parents=True, exist_ok=True)
    with temporary_server(port, home) as url:
        print(f"Prefect UI: http://127.0.0.1:{port} (state in {home}/: this run and earlier ones)", flush=True)
        with subprocess.Popen(command, env={**os.environ, PREFECT_API_URL.name: url}) as child:
            previous = signal.signal(signal.SIGINT, lambda *_: None)  # a Ctrl-C is the command's to handle
            try:
                return child.wait()
            finally:
                signal.signal(signal.SIGINT, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a command (e.g. dvc repro) against one Prefect server.")
    parser.add_argument("--home", type=Path, default=Path(".prefect"), help="the server's state (default .prefect)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PREFECT_PORT", "4200")))
    parser.add_argument("command", nargs="+", help="the command, after --")
    args = parser.parse_args(argv)
    codes = []
    return report(lambda: codes.append(run_with_server(args.command, args.home, args.port))) or codes[0]


if __name__ == "__main__":
    sys.exit(main())

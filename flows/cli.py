"""Command line shared by the study flows: validate params first, then run the flow.

    python -m flows.gaussian [params.yaml]
    python -m flows.images [params.yaml] [digits|mnist|cifar10]     (flows with several studies)

A bad params file, corrupt stored data, a missing input or an unreachable MLflow or Prefect
server (MLFLOW_TRACKING_URI, PREFECT_API_URL) stops with one line on stderr and a non-zero exit
code, before any output is written.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Callable
from urllib.parse import urlsplit

from prefect.settings import PREFECT_API_URL

from tasks.lock import LockedError
from tasks.params import ParamsError, load_params
from tasks.storage import CorruptDataError, InputUnavailableError


CONNECT_TIMEOUT = 3.0  # seconds to wait for a server before calling it unreachable


def check_server(name: str, url: str | None, fix: str) -> None:
    """InputUnavailableError naming `url` when nothing accepts a TCP connection there (http(s) only)."""
    parts = urlsplit(url or "")
    if parts.scheme not in ("http", "https"):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise InputUnavailableError(f"{name} at {url} is unreachable ({exc.strerror or exc}); {fix}") from None


def check_mlflow_server() -> None:
    """The MLflow tracking server of MLFLOW_TRACKING_URI, when it names one."""
    check_server("the MLflow tracking server", os.environ.get("MLFLOW_TRACKING_URI"),
                 "start it, or unset MLFLOW_TRACKING_URI to use the local .mlflow store")


def check_servers() -> None:
    """The MLflow tracking server and the Prefect API the run would use, when they are servers."""
    check_mlflow_server()
    check_server("the Prefect API", PREFECT_API_URL.value(),
                 "start it (prefect server start), or unset PREFECT_API_URL to use a temporary server")


def main(flow_fn: Callable[..., object], argv: list[str] | None = None, studies: list[str] | None = None,
         preflight: Callable[..., object] | None = None) -> int:
    """Run `flow_fn(params_file=...)`, or with `studies`, `flow_fn(params_file=..., study=...)`.

    `preflight`, called with the same arguments before the flow starts, checks the other inputs
    (data files, upstream outputs) so that a problem there is also one line, not a flow failure."""
    parser = argparse.ArgumentParser(description=flow_fn.__doc__)
    parser.add_argument("params", nargs="?", default="params.yaml", help="params file (default: params.yaml)")
    if studies:
        parser.add_argument("study", nargs="?", default=studies[0], choices=studies)
    args = parser.parse_args(argv)

    def run() -> None:
        load_params(args.params)
        check_servers()
        kwargs = {"params_file": args.params, **({"study": args.study} if studies else {})}
        if preflight:
            preflight(**kwargs)
        flow_fn(**kwargs)

    return report(run)


def report(run: Callable[[], object]) -> int:
    """Exit code of `run()`: 0, or 2 after one line on stderr for an error the user can fix."""
    try:
        run()
    except (ParamsError, CorruptDataError, InputUnavailableError, LockedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0

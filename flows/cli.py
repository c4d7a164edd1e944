"""Command line shared by the flows: validate params and inputs first, then run the flow.

    python -m flows.study gaussian [params.yaml] [--overlay params.paper.yaml]
    python -m flows.classifier digits [params.yaml]

A bad params file, corrupt stored data, a missing input, a held lock or an unreachable MLflow or
Prefect server (MLFLOW_TRACKING_URI, PREFECT_API_URL) stops with one line on stderr and exit
code 2, before any output is written (any `tasks.errors.UserError`).
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

from prefect.settings import PREFECT_API_URL

from tasks.errors import InputUnavailableError, report
from tasks.studies import load_params

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


def main(flow_fn: Callable[..., object], studies: list[str], argv: list[str] | None = None,
         preflight: Callable[..., object] | None = None) -> int:
    """Run `flow_fn(study=..., params_file=..., overlay=...)` for one of `studies`.

    `preflight`, called with the same arguments before the flow starts, checks the other inputs
    (data files, upstream outputs) so that a problem there is also one line, not a flow failure."""
    parser = argparse.ArgumentParser(description=flow_fn.__doc__)
    parser.add_argument("study", choices=studies)
    parser.add_argument("params", nargs="?", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--overlay", help="a params file laid over it, holding only what differs "
                        "(e.g. params.paper.yaml)")
    args = parser.parse_args(argv)

    def run() -> None:
        kwargs = {"study": args.study, "params_file": args.params, "overlay": args.overlay}
        load_params(args.params, args.overlay)
        check_servers()
        if preflight:
            preflight(**kwargs)
        flow_fn(**kwargs)

    return report(run)

"""Command line shared by the flows: validate params and inputs first, then run the flow.

    python -m flows.study gaussian [params.yaml] [--overlay params.paper.yaml]
    python -m flows.classifier digits [params.yaml]

A bad params file, corrupt stored data, a missing input, a held lock or an MLflow or Prefect
server (MLFLOW_TRACKING_URI, PREFECT_API_URL) that does not answer its API stops with one line on
stderr and exit code 2 before any output is written; a write the system refuses (read-only folder,
full disk) during the run also ends with one line and exit code 2, Ctrl-C with one line and 130
(`tasks.errors.report`).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn

import httpx
from mlflow.exceptions import MlflowException
from prefect.settings import PREFECT_API_URL

from tasks.errors import InputUnavailableError, debugging, report
from tasks.infra import workers
from tasks.infra.prefect_server import prefect_api
from tasks.infra.servers import check_servers, masked
from tasks.studies import load_params


class _NoErrorLogs(logging.Filter):
    """Drops ERROR logs (a failed task's traceback, "Finished in state Failed", a database driver
    interrupted by Ctrl-C): the error itself ends the command with one line (`tasks.errors.report`),
    or with its traceback if it is a bug."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


def quiet_console() -> None:
    """Prefect's console shows progress, not errors, unless AUTOPHAGY_DEBUG is set; the Prefect UI
    keeps every log. Log handlers that fail (logs sent to a Prefect API that died) stay silent."""
    if debugging():
        return
    logging.raiseExceptions = False
    for handler in logging.getLogger().handlers:
        if type(handler).__name__ == "PrefectConsoleHandler":
            handler.addFilter(_NoErrorLogs())


def _failed_during_run(server: str, exc: Exception) -> InputUnavailableError:
    """`server` (its name and URL) failed with `exc` while the flow ran: one line, credentials masked."""
    return InputUnavailableError(masked(f"{server} failed during the run ({str(exc).splitlines()[0][:200]}); "
                                        "check the server, then rerun the same command to resume"))


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
        workers.count()  # AUTOPHAGY_WORKERS, if set, is a number
        check_servers()
        if preflight:
            preflight(**kwargs)
        with prefect_api():
            try:
                flow_fn(**kwargs)
            except httpx.HTTPError as exc:  # PrefectHTTPStatusError is one
                raise _failed_during_run(f"the Prefect API at {PREFECT_API_URL.value()}", exc) from None
            except MlflowException as exc:
                if not str(exc).startswith("API request to"):  # not the server's failure
                    raise
                raise _failed_during_run(f"the MLflow tracking server at {os.environ['MLFLOW_TRACKING_URI']}",
                                         exc) from None

    quiet_console()
    return report(run)


def exit_process(code: int) -> NoReturn:
    """End the process with `code`, skipping the interpreter's last garbage collections: they would walk every
    object torch, Prefect and MLflow allocated (about 1 s) while nothing is left to free."""
    gc.freeze()
    sys.exit(code)

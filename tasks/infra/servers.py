"""The servers a run talks to, checked by a real API call before anything runs.

The MLflow tracking server of MLFLOW_TRACKING_URI answers `GET /api/2.0/mlflow/experiments/search`
and the Prefect API of PREFECT_API_URL answers `GET /health` and `GET /admin/version`, each within
`TIMEOUT` seconds: an
unreachable host, a closed port, a silent listener, a TLS failure, refused credentials or an HTTP
server that is not the one expected all stop with one line (`InputUnavailableError`). Credentials
in a URL are masked in every message (`masked`).
"""

from __future__ import annotations

import base64
import os
import re
import urllib.error
import urllib.request
from urllib.parse import unquote, urlsplit, urlunsplit

from prefect.settings import PREFECT_API_URL

from tasks.errors import InputUnavailableError

CREDENTIALS = re.compile(r"(//[^/@\s:]+):[^/@\s]*@")  # //user:password@ in a URL
TIMEOUT = 8.0  # seconds for a server to accept the connection and answer (a busy local server can take seconds)


def masked(text: str) -> str:
    """`text` with the password of every URL's user info replaced by ***."""
    return CREDENTIALS.sub(r"\1:***@", text)


def _host(netloc: str) -> str:
    """host[:port] of a URL's netloc, without user info."""
    return netloc.rpartition("@")[2]


def check_api(name: str, url: str | None, path: str, fix: str) -> None:
    """InputUnavailableError naming `name` and `url` (masked) unless GET `url` + `path` answers 200 within
    TIMEOUT seconds; nothing to check unless `url` is http(s)."""
    parts = urlsplit(url or "")
    if parts.scheme not in ("http", "https"):
        return
    plain = urlunsplit(parts._replace(netloc=_host(parts.netloc)))
    request = urllib.request.Request(plain.rstrip("/") + path)
    if parts.username:
        user = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(user.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            response.read()
        return
    except urllib.error.HTTPError as exc:
        problem = f"answered HTTP {exc.code} to GET {path}" + (
            " (credentials refused)" if exc.code in (401, 403) else " (a server error: see its log)"
            if exc.code >= 500 else f": not {name}, or not at this path")
    except urllib.error.URLError as exc:
        reason = exc.reason
        problem = f"is unreachable ({getattr(reason, 'strerror', None) or reason})"
    except TimeoutError:
        problem = f"did not answer within {TIMEOUT:g} s"
    except OSError as exc:
        problem = f"failed ({exc})"
    raise InputUnavailableError(f"{name} at {masked(url)} {problem}; {fix}")


def check_mlflow_server() -> None:
    """The MLflow tracking server of MLFLOW_TRACKING_URI, when it names one."""
    check_api("the MLflow tracking server", os.environ.get("MLFLOW_TRACKING_URI"),
              "/api/2.0/mlflow/experiments/search?max_results=1",
              "start it or correct the URI, or unset MLFLOW_TRACKING_URI to use the local .mlflow store")


def check_servers() -> None:
    """The MLflow tracking server and the Prefect API the run would use, when they are servers."""
    check_mlflow_server()
    for path in ("/health", "/admin/version"):  # the second is the first call a Prefect client makes
        check_api("the Prefect API", PREFECT_API_URL.value(), path,
                  "start it (prefect server start) or correct the URL (it ends in /api), or unset PREFECT_API_URL to "
                  "use a temporary server")

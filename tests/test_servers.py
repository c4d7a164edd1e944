"""Servers checked by a real API call: every way a server can fail to be the one expected stops
within seconds with one line, credentials masked (tasks/infra/servers.py)."""

from __future__ import annotations

import contextlib
import http.server
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.cli import main
from flows.study import study_flow
from tasks.errors import InputUnavailableError
from tasks.infra import servers

from conftest import ROOT, free_port, subprocess_env, write_params


@contextlib.contextmanager
def http_server(status: int, body: bytes = b"{}") -> Iterator[int]:
    """An HTTP server on loopback answering every GET with `status`; yields its port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the name http.server calls)
            Handler.seen.append((self.path, self.headers.get("Authorization")))  # before the client hears back
            self.send_response(status)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    Handler.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], Handler.seen
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A socket that accepts connections (the kernel's backlog) and never answers; yields its port."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def failure(url: str, path: str = "/health") -> tuple[str, float]:
    """The one-line message of `check_api` for `url`, and the seconds it took."""
    start = time.monotonic()
    with pytest.raises(InputUnavailableError) as error:
        servers.check_api("the Prefect API", url, path, "the fix")
    message = str(error.value)
    assert "\n" not in message and message.endswith("; the fix")
    return message, time.monotonic() - start


def test_an_http_server_that_is_not_the_api_is_named():
    with http_server(404) as (port, seen):
        message, seconds = failure(f"http://127.0.0.1:{port}/api")
    assert message.startswith(f"the Prefect API at http://127.0.0.1:{port}/api answered HTTP 404 to GET /health: "
                              "not the Prefect API, or not at this path")
    assert seen == [("/api/health", None)] and seconds < 2


def test_a_listener_that_never_answers_fails_after_the_timeout():
    with silent_listener() as port:
        message, seconds = failure(f"http://127.0.0.1:{port}/api")
    assert f"at http://127.0.0.1:{port}/api did not answer within 8 s" in message
    assert servers.TIMEOUT - 0.5 < seconds < 10


def test_tls_to_a_plain_http_server_fails_with_the_reason():
    with http_server(200) as (port, _):
        message, seconds = failure(f"https://127.0.0.1:{port}/api")
    assert f"at https://127.0.0.1:{port}/api is unreachable (" in message and "SSL" in message.upper()
    assert seconds < 10


def test_a_closed_port_is_unreachable():
    port = free_port()
    message, seconds = failure(f"http://127.0.0.1:{port}/api")
    assert f"at http://127.0.0.1:{port}/api is unreachable (Connection refused)" in message and seconds < 2


def test_credentials_are_sent_but_never_shown():
    with http_server(401) as (port, seen):
        message, _ = failure(f"http://ada:s3cr%40t@127.0.0.1:{port}")
    assert "s3cr" not in message
    assert message.startswith(f"the Prefect API at http://ada:***@127.0.0.1:{port} answered HTTP 401 to GET "
                              "/health (credentials refused)")
    assert seen == [("/health", "Basic YWRhOnMzY3JAdA==")]  # base64 of ada:s3cr@t


def test_an_answering_server_passes_and_other_schemes_are_not_checked():
    with http_server(200) as (port, seen):
        servers.check_api("the Prefect API", f"http://127.0.0.1:{port}/api/", "/health", "the fix")
    assert seen == [("/api/health", None)]
    servers.check_api("the MLflow tracking server", "sqlite:///nowhere/mlflow.db", "/x", "the fix")
    servers.check_api("the MLflow tracking server", None, "/x", "the fix")


@pytest.mark.parametrize("url, shown", [
    ("http://ada:pw@host:5000/api", "http://ada:***@host:5000/api"),
    ("postgresql://ada:pw@db/mlflow", "postgresql://ada:***@db/mlflow"),
    ("http://host:5000", "http://host:5000"),
    ("http://ada@host", "http://ada@host"),
    ("API request to http://ada:pw@host/api/2.0/x failed; postgresql://bo:x%40y@db/m", "API request to "
     "http://ada:***@host/api/2.0/x failed; postgresql://bo:***@db/m"),
])
def test_masked(url, shown):
    assert servers.masked(url) == shown


def test_a_prefect_api_failing_its_version_call_is_refused_before_the_run():
    """A server whose /health answers but whose /admin/version (a Prefect client's first call) fails."""
    with http_server(200) as (port, seen), temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{port}/api"}):
        servers.check_servers()
        assert seen == [("/api/health", None), ("/api/admin/version", None)]
    with http_server(500) as (port, _), temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{port}/api"}):
        with pytest.raises(InputUnavailableError, match=r"answered HTTP 500 to GET /health \(a server error: see its "
                                                        r"log\); start it"):
            servers.check_servers()


def test_the_command_line_stops_on_a_wrong_server_in_one_line(tmp_path):
    """Through the command line: MLFLOW_TRACKING_URI naming an HTTP server that is not MLflow."""
    path = write_params(tmp_path)
    with http_server(404) as (port, _):
        env = {**subprocess_env(), "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
        result = subprocess.run([sys.executable, "-m", "flows.study", "gaussian", str(path)], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == (f"error: the MLflow tracking server at http://127.0.0.1:{port} answered HTTP 404 to GET "
                             "/api/2.0/mlflow/experiments/search?max_results=1: not the MLflow tracking server, or "
                             "not at this path; start it or correct the URI, or unset MLFLOW_TRACKING_URI to use "
                             "the local .mlflow store\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]



def test_a_tracking_server_failing_during_the_run_is_one_line(tmp_path, monkeypatch, capsys, prefect_api):
    """A server that passes the check (its GETs answer) but refuses every write (POST: HTTP 501), its
    credentials masked in the line."""
    path = write_params(tmp_path, gaussian={"n_samples": 8, "generations": 2, "seeds": 2})
    monkeypatch.chdir(tmp_path)
    with http_server(200) as (port, seen):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://ada:pw@127.0.0.1:{port}")
        assert main(study_flow, ["gaussian"], ["gaussian", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pw" not in err, err
    assert err.startswith(f"error: the MLflow tracking server at http://ada:***@127.0.0.1:{port} failed during the "
                          "run (API request to ")
    assert err.endswith("; check the server, then rerun the same command to resume\n")
    assert seen[0] == ("/api/2.0/mlflow/experiments/search?max_results=1", "Basic YWRhOnB3")

"""Shared fixtures: a real Prefect test server, shrunk params files, a DVC repo in a temp dir, and
helpers for tests that talk to servers over HTTP."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROJECT_FILES = ["flows", "tasks", "models", "dvc.yaml", "params.yaml", ".dvc/plots", ".dvcignore"]

os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def prefect_api() -> str:
    """A temporary Prefect server for the whole session; its URL is shared with subprocesses."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory) -> str:
    """One SQLite MLflow store for the in-process tests (creating its tables takes seconds)."""
    from mlflow import MlflowClient

    from tasks.studies import STUDIES

    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    client = MlflowClient(uri)
    for study in STUDIES:  # artifacts in the temp dir, not ./mlruns
        client.create_experiment(study.name, artifact_location=(folder / study.name).as_uri())
    yield uri
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def write_params(folder: Path, **sections) -> Path:
    """The repository's params.yaml with some sections' keys replaced, written to folder/params.yaml."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in sections.items():
        if isinstance(value, dict):
            params[key] = {**params.get(key, {}), **value}
        else:
            params[key] = value
    path = folder / "params.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def subprocess_env(prefect_api: str | None = None) -> dict[str, str]:
    """The environment of a child process: this interpreter first on PATH, the session's Prefect server."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": "", "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@localhost",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@localhost"}
    env.pop("MLFLOW_TRACKING_URI", None)  # child processes use the project's default store
    if prefect_api:
        env["PREFECT_API_URL"] = prefect_api
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def api_json(url: str, body: dict | None = None) -> object:
    """GET (or POST `body` to) a REST API; the decoded JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_for(condition, seconds: float, what: str):
    """The first true value of `condition()` within `seconds` (connection errors count as not yet)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def run(cmd: list[str], cwd: Path, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """The project's code, pipeline and params in a fresh git + DVC repository."""
    repo = tmp_path / "repo"
    repo.mkdir()
    env = subprocess_env()
    run(["git", "init", "-q"], repo, env)
    run([sys.executable, "-m", "dvc", "init", "-q"], repo, env)
    for name in PROJECT_FILES:
        source, target = ROOT / name, repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    return repo

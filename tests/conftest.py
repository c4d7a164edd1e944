"""Shared fixtures: a real Prefect test server, shrunk params files, a DVC repo in a temp dir, and
helpers for tests that talk to servers over HTTP.

The suite is hermetic: at import, before torch, matplotlib, MLflow, Prefect or DVC are imported, every
user cache and config folder they read (TORCH_HOME, HF_HOME, MPLCONFIGDIR, PREFECT_HOME, XDG_*) points
into one temporary folder for the session, inherited by child processes; telemetry is off; and in this
process a connection to, or a name lookup of, any host but this one fails as on a machine offline.
"""

from __future__ import annotations

import atexit
import errno
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROJECT_FILES = ["flows", "tasks", "models", "dvc.yaml", "params.yaml", ".dvc/plots", ".dvcignore"]

USER_DIRS = Path(tempfile.mkdtemp(prefix="autophagy-tests-"))
atexit.register(shutil.rmtree, USER_DIRS, ignore_errors=True)
for variable, folder in {"TORCH_HOME": "torch", "HF_HOME": "huggingface", "MPLCONFIGDIR": "matplotlib",
                         "PREFECT_HOME": "prefect", "SCIKIT_LEARN_DATA": "scikit_learn_data",
                         "XDG_CACHE_HOME": "cache", "XDG_CONFIG_HOME": "config", "XDG_DATA_HOME": "data",
                         "XDG_STATE_HOME": "state", "DVC_GLOBAL_CONFIG_DIR": "dvc/global",
                         "DVC_SITE_CACHE_DIR": "dvc/site"}.items():
    os.environ[variable] = str(USER_DIRS / folder)
for variable in ("PREFECT_API_URL", "PREFECT_PROFILE", "MLFLOW_TRACKING_URI"):
    os.environ.pop(variable, None)
os.environ.update({"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
                   "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"})
# Studies compute in their own process (one worker), as monkeypatched code does; starting worker processes costs
# seconds per study. tests/test_workers.py runs method loops side by side in worker processes.
os.environ["AUTOPHAGY_WORKERS"] = "1"
# `make test` runs the suite in 2 processes (pytest-xdist) on 2 cores: one torch thread each, since threads waiting
# for each other on busy cores made the in-process trainings 3 to 5 times slower.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ["OMP_NUM_THREADS"] = "1"


def _local(host) -> bool:
    """True for this machine: loopback or unspecified addresses, localhost, its own host name."""
    host = host.decode() if isinstance(host, bytes) else host
    if host is None or host in ("", "localhost", socket.gethostname()):
        return True
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


_getaddrinfo, _connect, _connect_ex = socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex


def _offline_getaddrinfo(host, *args, **kwargs):
    if not _local(host):
        raise socket.gaierror(socket.EAI_NONAME, f"Name or service not known (the tests are offline): {host}")
    return _getaddrinfo(host, *args, **kwargs)


def _refuse_remote(sock: socket.socket, address) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
        raise OSError(errno.ENETUNREACH, f"Network is unreachable (the tests are offline): {address[0]}")


def _offline_connect(sock: socket.socket, address) -> None:
    _refuse_remote(sock, address)
    return _connect(sock, address)


def _offline_connect_ex(sock: socket.socket, address) -> int:
    _refuse_remote(sock, address)
    return _connect_ex(sock, address)


socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex = (
    _offline_getaddrinfo, _offline_connect, _offline_connect_ex)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Test files with the most tests marked slow first (in the order they hold): `make test` hands whole files to
    its processes in this order, so that the long ones start early and the processes end together."""
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])


@pytest.fixture(scope="session")
def prefect_api() -> str:
    """A temporary Prefect server for the whole session; its URL is shared with subprocesses."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
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


def method_loop_runs(parent) -> dict[str, list[tuple[str, str]]]:
    """What the Prefect API shows under the study's flow run `parent`: {subflow run name: sorted (task run name, state)}."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId, TaskRunFilter, \
        TaskRunFilterFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort, TaskRunSort

    with get_client(sync_client=True) as client:
        loops = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])), sort=FlowRunSort.ID_DESC, limit=50)
        return {loop.name: sorted((task.name, task.state_type.value) for task in client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[loop.id])),
            sort=TaskRunSort.ID_DESC, limit=100)) for loop in loops}


def subprocess_env(prefect_api: str | None = None) -> dict[str, str]:
    """The environment of a child process: this interpreter first on PATH, the session's Prefect server."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": "", "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@localhost",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@localhost"}
    env.pop("MLFLOW_TRACKING_URI", None)  # child processes use the project's default store
    if prefect_api:
        env["PREFECT_API_URL"] = prefect_api
    return env


def interruptible() -> None:
    """A `preexec_fn` for a child that a test sends Ctrl-C: SIGINT back to its default action. A test runner started
    in the background of a script (`make test &`) hands SIGINT down ignored, and Python then keeps ignoring it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def figure_pixels(path: Path, inches: tuple[float, float], dpi: int = 110) -> np.ndarray:
    """The RGB pixels (height, width, 3) of the PNG at `path`, checked to be a figure of `inches` (width,
    height) saved at `dpi` (tasks.outputs.figures.save): exactly that many pixels each way."""
    from matplotlib.image import imread

    pixels = imread(path)[..., :3]
    assert pixels.shape[:2] == (round(inches[1] * dpi), round(inches[0] * dpi)), (path, pixels.shape)
    return pixels


def ink(pixels: np.ndarray) -> float:
    """Share of pixels that differ from the background (the top-left pixel)."""
    return float((np.abs(pixels - pixels[0, 0]).sum(-1) > 0.1).mean())


def colour(pixels: np.ndarray) -> float:
    """Share of coloured (not grey) pixels: curves and bands, not text, axes or grid."""
    return float((pixels.max(-1) - pixels.min(-1) > 0.2).mean())


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
        time.sleep(0.2)
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

"""Deployments on a real Prefect server: registered with their schedules, run with custom parameters."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from flows.serve import load

from conftest import ROOT, subprocess_env, write_params


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _api(url: str, body: dict | None = None) -> object:
    """GET (or POST `body` to) the Prefect REST API; the decoded JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _wait(condition, seconds: float, what: str):
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


def test_shipped_deployments_file_is_valid():
    entries = load(ROOT / "flows/deployments.yaml")
    assert {e.flow for e in entries} >= {"gaussian", "gmm", "images"} and all(e.cron for e in entries)


def test_bad_deployments_file_is_one_line(tmp_path):
    path = tmp_path / "deployments.yaml"
    path.write_text(yaml.safe_dump({"deployments": [{"name": "x", "flow": "gausian", "cron": "0 2 * * *"}]}))
    with pytest.raises(ValueError, match=r"deployments.0.flow: .*flows: gaussian"):
        load(path)


@pytest.mark.slow
def test_served_deployments_have_schedules_and_run_with_parameters(tmp_path, project_copy):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**subprocess_env(), "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api}
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    served = None
    try:
        _wait(lambda: _api(f"{api}/health"), 90, "the Prefect server")
        write_params(project_copy / "tiny", gaussian={"n_samples": 5, "generations": 3, "seeds": 4})
        deployments = project_copy / "deployments.yaml"
        deployments.write_text(yaml.safe_dump({"deployments": [
            {"name": "nightly", "flow": "gaussian", "cron": "0 2 * * *", "parameters": {"params_file": "params.yaml"}},
            {"name": "weekly", "flow": "grid", "cron": "0 4 * * 0", "parameters": {"params_file": "params.yaml"}},
        ]}))
        served = subprocess.Popen([sys.executable, "-m", "flows.serve", str(deployments)], cwd=project_copy,
                                  env={**env, "PYTHONPATH": str(project_copy)},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        found = _wait(lambda: [d for d in _api(f"{api}/deployments/filter", {}) if d["name"] in ("nightly", "weekly")]
                      if len(_api(f"{api}/deployments/filter", {})) == 2 else None, 90, "the deployments")
        crons = {d["name"]: [s["schedule"]["cron"] for s in d["schedules"]] for d in found}
        assert crons == {"nightly": ["0 2 * * *"], "weekly": ["0 4 * * 0"]}
        nightly = next(d for d in found if d["name"] == "nightly")
        run = _api(f"{api}/deployments/{nightly['id']}/create_flow_run",
                   {"parameters": {"params_file": "tiny/params.yaml"}})
        state = _wait(lambda: (s := _api(f"{api}/flow_runs/{run['id']}")["state"]["type"]) in
                      ("COMPLETED", "FAILED", "CRASHED") and s, 240, "the flow run")
        assert state == "COMPLETED"
        assert sorted(p.name for p in (project_copy / "data/generations/gaussian/mle").glob("*.parquet")) == [
            "gen_000.parquet", "gen_001.parquet", "gen_002.parquet"]  # the custom parameters were used
    finally:
        for process in (served, server):
            if process is not None:
                process.terminate()
                process.wait(timeout=30)

"""Deployments on a real Prefect server: registered with their schedules, run with custom parameters."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from flows.serve import load
from tasks.errors import ParamsError
from tasks.studies import STUDIES

from conftest import ROOT, api_json, free_port, subprocess_env, wait_for, write_params


def test_shipped_deployments_file_is_valid():
    entries = load(ROOT / "flows/deployments.yaml")
    studies = {e.parameters["study"] for e in entries if e.flow == "study"}
    assert studies == {s.name for s in STUDIES if s.default(ROOT)} and all(e.cron for e in entries)


@pytest.mark.parametrize("entry, message", [
    ({"flow": "gausian"}, r"deployments.flow = 'gausian' is invalid: .*'study'.*flows: study, classifier, sweep"),
    ({"flow": "study", "parameters": {"study": "gausian"}}, r"parameters.study: unknown study 'gausian'"),
])
def test_bad_deployments_file_is_one_line(tmp_path, entry, message):
    path = tmp_path / "deployments.yaml"
    path.write_text(yaml.safe_dump({"deployments": [{"name": "x", "cron": "0 2 * * *", **entry}]}))
    with pytest.raises(ParamsError, match=message) as error:
        load(path)
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_served_deployments_have_schedules_and_run_with_parameters(tmp_path, project_copy):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**subprocess_env(), "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"}
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    served = None
    try:
        wait_for(lambda: api_json(f"{api}/health"), 90, "the Prefect server")
        write_params(project_copy / "tiny", gaussian={"n_samples": 5, "generations": 3, "seeds": 4})
        deployments = project_copy / "deployments.yaml"
        deployments.write_text(yaml.safe_dump({"deployments": [
            {"name": "nightly", "flow": "study", "cron": "0 2 * * *",
             "parameters": {"study": "gaussian", "params_file": "params.yaml"}},
            {"name": "weekly", "flow": "study", "cron": "0 4 * * 0", "parameters": {"study": "grid", "params_file": "params.yaml"}},
        ]}))
        served = subprocess.Popen([sys.executable, "-m", "flows.serve", str(deployments)], cwd=project_copy,
                                  env={**env, "PYTHONPATH": str(project_copy)},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        found = wait_for(lambda: [d for d in api_json(f"{api}/deployments/filter", {}) if d["name"] in ("nightly", "weekly")]
                      if len(api_json(f"{api}/deployments/filter", {})) == 2 else None, 90, "the deployments")
        crons = {d["name"]: [s["schedule"]["cron"] for s in d["schedules"]] for d in found}
        assert crons == {"nightly": ["0 2 * * *"], "weekly": ["0 4 * * 0"]}
        nightly = next(d for d in found if d["name"] == "nightly")
        scheduled = wait_for(lambda: api_json(f"{api}/flow_runs/filter", {  # by the server's scheduler service
            "deployments": {"id": {"any_": [nightly["id"]]}}, "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
            "sort": "EXPECTED_START_TIME_ASC", "limit": 5}), 60, "the scheduler's runs of the deployment")
        assert [r["expected_start_time"][11:19] for r in scheduled] == ["02:00:00"] * len(scheduled)
        run = wait_for(lambda: api_json(f"{api}/deployments/{nightly['id']}/create_flow_run",  # 503 while
                                        {"parameters": {"params_file": "tiny/params.yaml"}}),  # SQLite is locked
                       60, "a flow run of the deployment")
        state = wait_for(lambda: (s := api_json(f"{api}/flow_runs/{run['id']}")["state"]["type"]) in
                      ("COMPLETED", "FAILED", "CRASHED") and s, 240, "the flow run")
        assert state == "COMPLETED"
        assert sorted(p.name for p in (project_copy / "data/generations/gaussian/mle").glob("*.parquet")) == [
            "gen_000.parquet", "gen_001.parquet", "gen_002.parquet"]  # the custom parameters were used
    finally:
        for process in (served, server):
            if process is not None:
                process.terminate()
                process.wait(timeout=30)

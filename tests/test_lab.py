"""Lab mode for real (tasks/infra/lab.py): PostgreSQL in a temporary folder, Prefect and MLflow on it, a process work
pool with two workers; a 2x2 sweep run through the pool and read back over the REST APIs; bad input; Ctrl-C and a
killed lab."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg2
import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.serve import load, main as serve_main
from flows.sweep import main as sweep_main
from tasks.errors import InputUnavailableError
from tasks.infra.lab import postgres_bindir
from tasks.infra.prefect_server import port_free

from conftest import ROOT, api_json, free_port, subprocess_env, wait_for, write_params
from test_faults import _one_error_line
from test_sweep import TINY, _check_points, _sweep_file

PASSWORD = "lab password"
POOL = "test-pool"
LOGS = {"initdb", "postgres", "prefect", "mlflow", "worker-1", "worker-2", "deploy"}


@dataclass(frozen=True)
class Lab:
    process: subprocess.Popen
    folder: Path  # the lab's --dir
    output: Path  # its stdout and stderr
    ports: dict[str, int]

    @property
    def prefect(self) -> str:
        return f"http://127.0.0.1:{self.ports['PREFECT_PORT']}/api"

    @property
    def mlflow(self) -> str:
        return f"http://127.0.0.1:{self.ports['MLFLOW_PORT']}"


def _lab_env(**settings: object) -> dict[str, str]:
    """The environment of a lab on free ports; `settings` override."""
    ports = {name: free_port() for name in ("LAB_PG_PORT", "PREFECT_PORT", "MLFLOW_PORT")}
    chosen = {name: str(value) for name, value in {**ports, **settings}.items()}
    return {**subprocess_env(), "LAB_PG_USER": "lab", "LAB_PG_PASSWORD": PASSWORD, "LAB_POOL": POOL,
            "LAB_WORKERS": "2", "PREFECT_WORKER_QUERY_SECONDS": "2", **chosen}


def _start(folder: Path, env: dict[str, str]) -> Lab:
    """`python -m tasks.infra.lab --dir <folder>/lab`, its output in <folder>/lab.out."""
    output = folder / "lab.out"
    with open(output, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "tasks.infra.lab", "--dir", str(folder / "lab")], cwd=ROOT,
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
    ports = {name: int(env[name]) for name in ("LAB_PG_PORT", "PREFECT_PORT", "MLFLOW_PORT")}
    return Lab(process, folder / "lab", output, ports)


def _ready(lab: Lab) -> bool:
    assert lab.process.poll() is None, lab.output.read_text()[-3000:]
    return "Ctrl-C stops the lab." in lab.output.read_text()


@pytest.fixture(scope="module")
def lab() -> Lab:
    """A lab in a temporary folder that the user postgres can reach (PostgreSQL runs as postgres under root); skipped,
    saying why, without PostgreSQL's binaries (.ci/run installs them)."""
    try:
        postgres_bindir()
    except InputUnavailableError as missing:
        pytest.skip(str(missing))
    folder = Path(tempfile.mkdtemp(prefix="lab-"))
    folder.chmod(0o755)
    started = _start(folder, _lab_env())
    try:
        wait_for(lambda: _ready(started), 300, "the lab")
        yield started
    finally:
        if started.process.poll() is None:
            started.process.send_signal(signal.SIGINT)
            started.process.wait(timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def _descendants(process: subprocess.Popen) -> list[psutil.Process]:
    return psutil.Process(process.pid).children(recursive=True)


def _command(process: psutil.Process) -> str:
    """Its command line; '' once it has ended (a zombie has: it only waits to be reaped)."""
    try:
        return "" if process.status() == psutil.STATUS_ZOMBIE else " ".join(process.cmdline())
    except psutil.NoSuchProcess:
        return ""


def _still_running(processes: list[psutil.Process], seconds: float) -> list[str]:
    """The command lines of `processes` still running after up to `seconds`."""
    deadline = time.monotonic() + seconds
    while (running := [command for command in map(_command, processes) if command]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return running


@pytest.mark.slow
def test_lab_runs_every_service_on_postgres(lab):
    """PostgreSQL on 127.0.0.1 only, with the password of the environment and both databases; Prefect and MLflow
    healthy; the pool's two workers online; every deployment of flows/deployments.yaml on the pool, loaded from the
    repository; the addresses printed; a log per service; the password on no command line."""
    text = lab.output.read_text()
    assert f"export PREFECT_API_URL={lab.prefect}\n" in text and f"export MLFLOW_TRACKING_URI={lab.mlflow}\n" in text
    with psycopg2.connect(host="127.0.0.1", port=lab.ports["LAB_PG_PORT"], user="lab", password=PASSWORD,
                          dbname="postgres") as connection, connection.cursor() as cursor:
        cursor.execute("SELECT datname FROM pg_database")
        assert {"prefect", "mlflow"} <= {row[0] for row in cursor}
        cursor.execute("SHOW listen_addresses")
        assert cursor.fetchone() == ("127.0.0.1",)
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(host="127.0.0.1", port=lab.ports["LAB_PG_PORT"], user="lab", password="x", dbname="postgres")
    assert api_json(f"{lab.prefect}/health") is True
    assert "experiments" in api_json(f"{lab.mlflow}/api/2.0/mlflow/experiments/search?max_results=1")
    assert api_json(f"{lab.prefect}/work_pools/{POOL}")["type"] == "process"
    workers = api_json(f"{lab.prefect}/work_pools/{POOL}/workers/filter", {})
    assert sorted((w["name"], w["status"]) for w in workers) == [(f"{POOL}-1", "ONLINE"), (f"{POOL}-2", "ONLINE")]
    deployments = [d for d in api_json(f"{lab.prefect}/deployments/filter", {}) if d["name"] != POOL]  # a sweep's
    assert {d["name"] for d in deployments} == {e.name for e in load(ROOT / "flows/deployments.yaml")}
    assert {d["work_pool_name"] for d in deployments} == {POOL}
    assert all(d["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
               for d in deployments)
    assert {p.stem for p in (lab.folder / "logs").iterdir()} == LOGS
    assert not any(PASSWORD in _command(process) for process in _descendants(lab.process))


@pytest.mark.slow
def test_sweep_2x2_runs_on_the_pool(lab, tmp_path):
    """Four points, each a flow run of the sweep's deployment that the pool's workers completed, tracked in the lab's
    MLflow: the sweep's run, each point's runs nested and tagged, their metrics, and artifacts in the lab's folder."""
    write_params(tmp_path, **TINY)
    sweep = _sweep_file(tmp_path, {"seed": [0, 1], "sampling_bias": [1.0, 0.5]})
    env = {**subprocess_env(), "PREFECT_API_URL": lab.prefect, "MLFLOW_TRACKING_URI": lab.mlflow}
    result = subprocess.run([sys.executable, "-m", "flows.sweep", str(sweep), "--root", str(tmp_path), "--runner",
                             "pool", "--pool", POOL], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    slugs = [f"seed={s},sampling_bias={b}" for s in (0, 1) for b in (1.0, 0.5)]
    (deployment,) = api_json(f"{lab.prefect}/deployments/filter", {"deployments": {"name": {"any_": [POOL]}}})
    assert deployment["work_pool_name"] == POOL
    runs = api_json(f"{lab.prefect}/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}}})
    assert sorted(run["name"] for run in runs) == sorted(slugs)
    assert {run["state_type"] for run in runs} == {"COMPLETED"} and {run["work_pool_name"] for run in runs} == {POOL}
    assert {run["parameters"]["root"] for run in runs} == {str(tmp_path / "sweeps/tiny" / slug) for slug in slugs}

    _check_points(tmp_path, slugs, lab.mlflow)  # files, and the runs' tags and nesting through MLflow's client
    experiment = api_json(f"{lab.mlflow}/api/2.0/mlflow/experiments/get-by-name?experiment_name=gaussian")
    found = api_json(f"{lab.mlflow}/api/2.0/mlflow/runs/search", {
        "experiment_ids": [experiment["experiment"]["experiment_id"]], "max_results": 1000,
        "filter": "tags.sweep = 'tiny' and tags.level != 'seed'"})["runs"]
    tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"]["tags"]} for r in found}
    (sweep_id,) = [run_id for run_id, tag in tags.items() if tag["level"] == "sweep"]
    studies = [run_id for run_id, tag in tags.items() if tag["level"] == "study"]
    assert sorted(tags[run_id]["sweep_point"] for run_id in studies) == sorted(slugs)
    assert all(tags[run_id]["mlflow.parentRunId"] == sweep_id for run_id in studies)
    methods = [r for r in found if tags[r["info"]["run_id"]]["level"] == "method"]
    assert len(methods) == 2 * len(slugs)
    for run in methods:
        history = api_json(f"{lab.mlflow}/api/2.0/mlflow/metrics/get-history?run_id={run['info']['run_id']}"
                           f"&metric_key={run['data']['metrics'][0]['key']}")["metrics"]
        assert sorted(m["step"] for m in history) == [0, 1, 2]
    for run_id in studies:  # served artifacts, stored under the lab's folder
        assert (lab.folder / "mlartifacts" / experiment["experiment"]["experiment_id"] / run_id / "artifacts"
                / "summary.json").exists()


@pytest.mark.slow
def test_a_point_that_fails_on_the_pool_ends_the_sweep_with_one_line(lab, tmp_path):
    """The point's study raises on the worker (its experiment locked by this process): the sweep names the point, the
    error and the address of the failed flow run's logs, exit code 2, no traceback. In a process of its own: the flow
    runs of this process must not send their events to a lab that a later test stops."""
    write_params(tmp_path, **TINY)
    sweep = _sweep_file(tmp_path, {"seed": [0]})
    locks = tmp_path / "sweeps/tiny/seed=0/.locks"
    locks.mkdir(parents=True)
    (locks / "gaussian.lock").write_text(json.dumps({"run": "held by the test", "host": socket.gethostname(),
                                                     "pid": os.getpid()}))
    env = {**subprocess_env(), "PREFECT_API_URL": lab.prefect, "MLFLOW_TRACKING_URI": lab.mlflow}
    result = subprocess.run([sys.executable, "-m", "flows.sweep", str(sweep), "--root", str(tmp_path), "--runner",
                             "pool", "--pool", POOL], env=env, capture_output=True, text=True, timeout=300)
    (run,) = api_json(f"{lab.prefect}/flow_runs/filter", {"flow_runs": {"name": {"any_": ["seed=0"]},
                                                                        "state": {"type": {"any_": ["FAILED"]}}}})
    assert result.returncode == 2, result.stderr[-3000:]
    line = _one_error_line(result.stderr)
    assert line.startswith("error: point seed=0: flow run seed=0 ended FAILED: ") and \
        "LockedError: gaussian is locked by run held by the test" in line, line
    ui = lab.prefect.removesuffix("/api")
    assert line.endswith(f"; its logs are at {ui}/runs/flow-run/{run['id']}; fix that and rerun the sweep to resume")


@pytest.mark.parametrize("case", ["unreachable", "no binaries", "PREFECT_PORT", "MLFLOW_PORT", "LAB_PG_PORT"])
def test_bad_lab_input_is_one_line_and_writes_nothing(tmp_path, case):
    """An existing PostgreSQL that does not answer, no PostgreSQL binaries, a port in use."""
    env = _lab_env()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        if case == "unreachable":
            env.update(LAB_PG_HOST="127.0.0.1", LAB_PG_PORT=str(free_port()))
            message = f"PostgreSQL at 127.0.0.1:{env['LAB_PG_PORT']} (user lab) is unreachable (connection to server"
        elif case == "no binaries":
            env["LAB_PG_BINDIR"] = str(tmp_path / "bin")
            message = f"no PostgreSQL server (initdb, postgres) in {tmp_path / 'bin'}; install Debian's package"
        else:
            env[case] = str(port)
            message = f"port {port} of 127.0.0.1 ({case}) is in use (a lab already running?); stop what listens"
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "tasks.infra.lab", "--dir", str(tmp_path / "lab")], cwd=ROOT,
                                env=env, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 10
    assert result.returncode == 2 and result.stderr.startswith(f"error: {message}"), result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("main", [sweep_main, serve_main], ids=["sweep", "serve"])
def test_a_missing_work_pool_is_one_line_and_writes_nothing(lab, tmp_path, monkeypatch, capsys, main):
    """In this process, as tests/test_sweep.py runs the sweep's bad input: a command's start-up (torch, MLflow,
    Prefect) alone takes seconds."""
    write_params(tmp_path, **TINY)
    sweep = _sweep_file(tmp_path, {"seed": [0, 1]})
    sweep.rename(sweep.with_name("lost.yaml"))
    before = sorted(tmp_path.rglob("*"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", lab.mlflow)
    started = time.monotonic()
    with temporary_settings(updates={PREFECT_API_URL: lab.prefect}):
        code = main([*(["sweeps/lost.yaml", "--runner", "pool"] if main is sweep_main else
                       [str(ROOT / "flows/deployments.yaml")]), "--pool", "nosuch"])
    seconds = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 2 and err == f"error: work pool 'nosuch' not found at {lab.prefect}; start the lab with " \
        "LAB_POOL=nosuch (make lab), or create it (prefect work-pool create nosuch --type process) and start its " \
        "workers\n" and seconds < 10
    assert sorted(tmp_path.rglob("*")) == before
    experiments = api_json(f"{lab.mlflow}/api/2.0/mlflow/experiments/search?max_results=1000")["experiments"]
    assert not api_json(f"{lab.mlflow}/api/2.0/mlflow/runs/search", {
        "experiment_ids": [e["experiment_id"] for e in experiments], "filter": "tags.sweep = 'lost'"}).get("runs")


@pytest.mark.slow
def test_a_killed_lab_takes_its_services_along(lab, tmp_path):
    """A second lab on the first one's PostgreSQL (LAB_PG_HOST), killed with SIGKILL once it is up: every process
    it started, MLflow's server child included, ends within seconds."""
    tmp_path.chmod(0o755)
    env = _lab_env(LAB_PG_HOST="127.0.0.1", LAB_PG_PORT=lab.ports["LAB_PG_PORT"], LAB_POOL="second", LAB_WORKERS=1)
    second = _start(tmp_path, env)
    try:
        wait_for(lambda: _ready(second), 300, "the second lab")
        services = _descendants(second.process)
    finally:
        second.process.kill()
        second.process.wait()
    commands = [_command(process) for process in services]
    assert len(commands) == 4, commands  # Prefect, MLflow and the server it started, a worker; no PostgreSQL
    assert sum("mlflow.server.fastapi_app" in command for command in commands) == 1
    assert _still_running(services, 20) == []
    assert all(port_free(second.ports[name]) for name in ("PREFECT_PORT", "MLFLOW_PORT"))


@pytest.mark.slow
def test_ctrl_c_stops_every_service_cleanly(lab):
    """SIGINT, as Ctrl-C sends: exit code 0, every service ended (PostgreSQL with a clean shutdown), every port
    free. Last in this module: it stops the shared lab."""
    services = _descendants(lab.process)
    lab.process.send_signal(signal.SIGINT)
    assert lab.process.wait(timeout=60) == 0, lab.output.read_text()[-3000:]
    assert lab.output.read_text().endswith("Lab stopped.\n")
    assert _still_running(services, 10) == []
    assert all(port_free(port) for port in lab.ports.values())
    assert (lab.folder / "logs/postgres.log").read_text().rstrip().endswith("database system is shut down")

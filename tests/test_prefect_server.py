"""The temporary Prefect server of a command line run without PREFECT_API_URL (tasks/infra/prefect_server.py):
one server, gone when the run ends or is killed, and one line when it does not come up."""

from __future__ import annotations

import ast
import json
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
from prefect.settings import (PREFECT_API_URL, PREFECT_SERVER_DATABASE_CONNECTION_URL,
                              PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings)

from tasks.errors import InputUnavailableError
from tasks.infra.prefect_server import SETTING, prefect_api

from conftest import ROOT, free_port, interruptible, subprocess_env, write_params

TINY_FLOW = """
import json, sys
import psutil
from prefect import flow
from flows.cli import main

@flow
def tiny(study: str, params_file: str, overlay: str | None = None) -> None:
    children = [(child.pid, child.create_time(), child.cmdline()) for child in psutil.Process().children()]
    print(json.dumps(children), file=open("children.json", "w"))

sys.exit(main(tiny, ["gaussian"]))
"""


def _env() -> dict[str, str]:
    """No PREFECT_API_URL; start-up time for a loaded machine (the session's test server gets 60 s)."""
    return {**subprocess_env(), "PYTHONPATH": str(ROOT), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.name: "120"}


def _is_server(process: psutil.Process) -> bool:
    try:
        return process.cmdline()[1:3] == ["-m", "uvicorn"]
    except psutil.Error:
        return False


def _running(pid: int, started: float) -> bool:
    """Whether the process `pid` started at `started` runs (a zombie has ended; it waits for its adopter to reap it)."""
    try:
        process = psutil.Process(pid)
        return abs(process.create_time() - started) < 0.01 and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _ends(pid: int, started: float, seconds: float = 5) -> bool:
    """Whether the process `pid` started at `started` ends within `seconds`; kills it if not."""
    deadline = time.monotonic() + seconds
    while _running(pid, started):
        if time.monotonic() > deadline:
            psutil.Process(pid).kill()
            return False
        time.sleep(0.1)
    return True


@pytest.mark.slow
def test_a_killed_run_takes_its_server_along(tmp_path):
    """SIGKILL of a study in mid-run: its server child ends within seconds (the kernel kills it)."""
    params = write_params(tmp_path, gaussian={"n_samples": 5, "generations": 4, "seeds": 4})
    with open(tmp_path / "run.log", "w") as log:
        run = subprocess.Popen([sys.executable, "-m", "flows.study", "gaussian", str(params)], cwd=tmp_path, env=_env(),
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        written, deadline = tmp_path / "data/generations/gaussian/mle/gen_000.parquet", time.monotonic() + 300
        while not written.exists():
            assert run.poll() is None and time.monotonic() < deadline, (tmp_path / "run.log").read_text()[-3000:]
            time.sleep(0.05)
        children = psutil.Process(run.pid).children()
        servers = [(child.pid, child.create_time()) for child in children if _is_server(child)]
    finally:
        run.kill()
        run.wait()
    assert len(servers) == 1
    assert _ends(*servers[0]), "the server outlived its run"


@pytest.mark.slow
def test_a_finished_run_used_one_server_and_stopped_it(tmp_path):
    """A command line run: exit 0; during its flow one child, the server (not a second one Prefect started),
    which has ended once the run has; no errors sending logs to it."""
    (tmp_path / "tiny.py").write_text(TINY_FLOW)
    write_params(tmp_path)
    result = subprocess.run([sys.executable, "tiny.py", "gaussian", "params.yaml"], cwd=tmp_path,
                            env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "error" not in result.stderr.lower(), result.stderr[-3000:]
    children = json.loads((tmp_path / "children.json").read_text())
    assert [command[1:3] for _, _, command in children] == [["-m", "uvicorn"]]
    assert _ends(*children[0][:2]), "the server outlived its run"


@pytest.mark.parametrize("setting, value, expected", [
    (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, 1,
     r"did not answer GET /health within 1 s; raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or start"),
    (PREFECT_SERVER_DATABASE_CONNECTION_URL, "sqlite+aiosqlite:////proc/none/prefect.db",
     r"exited with code \d+ \(sqlite3.OperationalError: unable to open database file\); fix that, or start"),
], ids=["timeout", "crash"])
def test_a_server_that_does_not_come_up_is_one_line_and_stopped(setting, value, expected):
    """Too short a start-up time, a database the server cannot open: one line naming the server, the cause
    and the fixes; the block never runs and no server is left."""
    before = set(psutil.Process().children())
    with temporary_settings(updates={setting: value}, restore_defaults={PREFECT_API_URL}):
        with pytest.raises(InputUnavailableError, match=expected) as caught:
            with prefect_api():
                pytest.fail("the block ran without a server")
    assert str(caught.value).startswith("the temporary Prefect server at http://127.0.0.1:")
    assert "\n" not in str(caught.value)
    assert set(psutil.Process().children()) == before


def _with_project_server(folder, home, port, *command: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in _env().items() if k != PREFECT_API_URL.name}
    return subprocess.run([sys.executable, "-m", "tasks.infra.prefect_server", "--home", str(home), "--port", str(port),
                           "--", *command], cwd=folder, env=env, capture_output=True, text=True, timeout=600)


READ_FLOW_RUNS = """
import os, sys
from prefect.client.orchestration import get_client
from prefect.client.schemas.sorting import FlowRunSort
with get_client(sync_client=True) as client:
    print(sorted((run.name, run.state_type.value) for run in client.read_flow_runs(sort=FlowRunSort.ID_DESC, limit=10)))
sys.exit(3)
"""


@pytest.mark.slow
def test_make_run_s_server_keeps_every_run_and_passes_the_exit_code_on(tmp_path):
    """`make run`'s server: the study runs against it, its address is printed, its state outlives it in --home,
    so a later server on that home shows the study's flow runs; the command's exit code is the exit code."""
    write_params(tmp_path, gaussian={"n_samples": 8, "generations": 2, "seeds": 2})
    home, port = tmp_path / ".prefect", free_port()
    study = _with_project_server(tmp_path, home, port, sys.executable, "-m", "flows.study", "gaussian", "params.yaml")
    assert study.returncode == 0, study.stderr[-3000:]
    assert study.stdout.startswith(f"Prefect UI: http://127.0.0.1:{port} (state in {home}/")
    later = _with_project_server(tmp_path, home, port, sys.executable, "-c", READ_FLOW_RUNS)
    assert later.returncode == 3, later.stderr[-3000:]
    assert later.stdout.splitlines()[-1] == str(sorted((name, "COMPLETED") for name in ("gaussian", "gaussian: mle ",
                                                                                          "gaussian: ple ")))


@pytest.mark.slow
def test_ctrl_c_during_make_run_is_reported_to_its_server_before_it_stops(tmp_path):
    """Ctrl-C in the terminal of `make run` (SIGINT to its process group): the study ends with one line and exit
    code 130 after telling the project's server, which stops only then; a later server shows the run CRASHED."""
    write_params(tmp_path, gaussian={"n_samples": 8, "generations": 200, "seeds": 2})
    home, port = tmp_path / ".prefect", free_port()
    env = {k: v for k, v in _env().items() if k != PREFECT_API_URL.name}
    run = subprocess.Popen([sys.executable, "-m", "tasks.infra.prefect_server", "--home", str(home), "--port", str(port),
                            "--", sys.executable, "-m", "flows.study", "gaussian", "params.yaml"], cwd=tmp_path, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                           preexec_fn=interruptible)
    deadline, records = time.monotonic() + 300, [tmp_path / f"data/generations/gaussian/{m}/gen_002.json"
                                                 for m in ("mle", "ple")]
    while not any(record.exists() for record in records):  # in the first method loop, whichever runs first
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()[1][-3000:]
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGINT)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr[-3000:]
    assert [line for line in stderr.splitlines() if line.startswith("error:")] == [
        "error: interrupted; rerun the same command to resume at the first unfinished generation"]
    later = _with_project_server(tmp_path, home, port, sys.executable, "-c", READ_FLOW_RUNS)
    assert ("gaussian", "CRASHED") in ast.literal_eval(later.stdout.splitlines()[-1]), later.stdout[-3000:]


def test_make_run_s_server_on_a_port_in_use_is_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = _with_project_server(tmp_path, tmp_path / ".prefect", port, "true")
    assert time.monotonic() - started < 10
    assert result.returncode == 2 and result.stderr == (
        f"error: port {port} of 127.0.0.1 is in use (a Prefect server already running?); set PREFECT_API_URL="
        f"http://127.0.0.1:{port}/api to use it, or choose another port with PREFECT_PORT\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_dvc_repro_starts_its_server_on_a_machine_at_load_4(project_copy):
    """`dvc repro gaussian` without PREFECT_API_URL while four processes keep every core busy (load 4 on
    2 cores): the study's temporary server comes up within the default start-up time and the stage passes."""
    repo = project_copy
    write_params(repo, gaussian={"n_samples": 8, "generations": 2, "seeds": 2})
    env = {k: v for k, v in subprocess_env().items() if k != SETTING}  # the project's default start-up time
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(4)]
    try:
        result = subprocess.run([sys.executable, "-m", "dvc", "repro", "gaussian"], cwd=repo, env=env,
                                capture_output=True, text=True, timeout=900)
        assert all(burner.poll() is None for burner in burners), "the load ended before the stage did"
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Timed out" not in result.stderr
    assert (repo / "metrics/gaussian/curves.csv").exists()

"""Two runs of one experiment in one repository: the second stops naming the first, never interleaves."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from flows.study import study_flow
from tasks.errors import LockedError
from tasks.infra.lock import experiment_lock

from conftest import ROOT, subprocess_env, write_params

TINY = {"n_samples": 5, "generations": 4, "seeds": 4}


def _hold(root, pid: int, run: str = "brave-otter (1234)") -> None:
    lock = root / ".locks/gaussian.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"run": run, "host": socket.gethostname(), "pid": pid, "started": "earlier"}))


def test_a_live_holder_stops_the_second_run_before_it_writes(tmp_path, prefect_api):
    params = write_params(tmp_path, gaussian=TINY)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _hold(tmp_path, sleeper.pid)
        with pytest.raises(LockedError, match=r"gaussian is locked by run brave-otter \(1234\) \(pid \d+"):
            study_flow(study="gaussian", params_file=str(params), root=str(tmp_path))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not (tmp_path / "data").exists()
    assert (tmp_path / ".locks/gaussian.lock").exists()  # the holder's lock is left alone


def test_a_stale_lock_is_taken_over_and_released(tmp_path, prefect_api):
    params = write_params(tmp_path, gaussian=TINY)
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _hold(tmp_path, int(finished.stdout))  # that process has exited
    tidy = study_flow(study="gaussian", params_file=str(params), root=str(tmp_path))
    assert sorted(tidy.generation.unique()) == [0, 1, 2, 3]
    assert not (tmp_path / ".locks/gaussian.lock").exists()


def test_the_lock_is_exclusive_and_released_on_error(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with experiment_lock(tmp_path, "gmm", "first"):
            with pytest.raises(LockedError, match="locked by run first"):
                with experiment_lock(tmp_path, "gmm", "second"):
                    pass
            raise RuntimeError("boom")
    with experiment_lock(tmp_path, "gmm", "third") as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_two_processes_at_once_both_succeed_or_one_is_refused(tmp_path, prefect_api):
    params = write_params(tmp_path, gaussian={**TINY, "generations": 30})
    env = {**subprocess_env(prefect_api), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "flows.study", "gaussian", str(params)]
    runs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    results = [(run.wait(timeout=300), run.communicate()[1]) for run in runs]
    refused = [err for code, err in results if code != 0]
    assert all(code == 0 for code, _ in results) or (
        len(refused) == 1 and any(line.startswith("error: gaussian is locked by run")
                                  for line in refused[0].splitlines())), results
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "resuming gaussian/mle at generation 30 of 30" in again.stderr + again.stdout

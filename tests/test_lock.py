"""Two runs of one experiment in one repository: the second stops naming the first, never interleaves."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.study import study_flow
from tasks.errors import LockedError
from tasks.infra.lock import experiment_lock

from conftest import ROOT, subprocess_env, write_params

TINY = {"n_samples": 5, "generations": 4, "seeds": 4}


def _hold(root, pid: int, run: str = "brave-otter (1234)") -> str:
    lock = root / ".locks/gaussian.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"run": run, "host": socket.gethostname(), "pid": pid, "started": "earlier"}))
    return lock.read_text()


def test_a_live_holder_stops_the_second_run_before_it_writes(tmp_path, prefect_api):
    params = write_params(tmp_path, gaussian=TINY)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        held = _hold(tmp_path, sleeper.pid)
        with pytest.raises(LockedError, match=r"gaussian is locked by run brave-otter \(1234\) \(pid \d+"):
            study_flow(study="gaussian", params_file=str(params), root=str(tmp_path))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not (tmp_path / "data").exists()
    assert (tmp_path / ".locks/gaussian.lock").read_text() == held  # the holder's lock is left alone


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


def _stopped(pid: int) -> bool:
    """Every thread of process `pid` is stopped (SIGSTOP takes effect asynchronously, thread by thread)."""
    tasks = Path(f"/proc/{pid}/task").iterdir()
    return all((t / "stat").read_text().rsplit(")", 1)[1].split()[0] == "T" for t in tasks)


def _files(root) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_a_second_process_during_a_run_is_refused_in_one_line_and_the_data_stay_whole(tmp_path, prefect_api):
    """Two command-line runs of one experiment, forced to overlap: the first is stopped (SIGSTOP) as soon as it has
    written its first sampled generation, then the second runs to its end. The second exits with code 2 and one
    `error:` line on stderr naming the first run's pid, and changes no file; the first, continued, completes; running
    again resumes from its records (no dataset rewritten) to byte-identical tables."""
    generations = 6
    params = write_params(tmp_path, gaussian={**TINY, "generations": generations})
    env = {**subprocess_env(prefect_api), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "flows.study", "gaussian", str(params)]
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        inside = tmp_path / "data/generations/gaussian/mle/gen_001.parquet"
        deadline = time.monotonic() + 300
        while not inside.exists():
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.02)
        first.send_signal(signal.SIGSTOP)
        while not _stopped(first.pid):
            time.sleep(0.01)
        tables = tmp_path / "metrics/gaussian"
        assert first.poll() is None and not tables.exists(), "the first run ended before the second started"
        before = _files(tmp_path)
        second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert _files(tmp_path) == before  # the refused run wrote nothing
    except BaseException:
        first.kill()
        first.wait()
        raise
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=300) == 0, log.read_text()[-3000:]
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert second.returncode == 2 and len(errors) == 1, (second.returncode, second.stderr[-3000:])
    assert errors[0].startswith("error: gaussian is locked by run gaussian (") and f"(pid {first.pid} on " in errors[0]

    stored = {path: path.stat().st_mtime_ns for path in (tmp_path / "data").rglob("*.parquet")}
    assert len(stored) == 2 * generations  # mle and ple, every generation
    written = {name: (tables / name).read_bytes() for name in ("per_generation.csv", "curves.csv", "summary.json")}
    study_flow(study="gaussian", params_file=str(params), root=str(tmp_path))
    assert {path: path.stat().st_mtime_ns for path in stored} == stored
    assert {name: (tables / name).read_bytes() for name in written} == written

"""A study's method loops side by side (tasks/infra/workers.py): computations in worker processes with one torch
thread, the numbers and Prefect runs of one worker, and a failure, Ctrl-C or a killed study that leaves no process
behind."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from functools import cached_property
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from flows.cli import main
from flows.study import study_flow
from tasks.infra import workers

from conftest import ROOT, interruptible, method_loop_runs, subprocess_env, write_params

GMM = dict(gmm={"generations": 2, "seeds": 2, "kl_samples": 500, "grid": {"weight": [0.8], "n_samples": [50]},
                "ple": {"lam": 0.1, "steps": 20, "batch_fraction": 0.25}})


def _meet(folder: str, name: str) -> tuple[int, int]:
    """Wait until two computations have announced themselves in `folder` (so both run at once); (pid, threads)."""
    Path(folder, name).touch()
    deadline = time.monotonic() + 60
    while len(list(Path(folder).iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid(), torch.get_num_threads()


def test_two_workers_compute_at_once_in_their_own_processes_with_one_thread(tmp_path):
    results = workers.side_by_side(lambda k: (k, workers.compute(_meet, str(tmp_path), str(k))), [(0,), (1,)], 2)
    assert [k for k, _ in results] == [0, 1]
    assert len(list(tmp_path.iterdir())) == 2
    pids = {pid for _, (pid, _) in results}
    assert len(pids) == 2 and os.getpid() not in pids
    assert [threads for _, (_, threads) in results] == [1, 1]


def test_one_worker_computes_here_with_one_thread_then_restores_the_threads():
    before = torch.get_num_threads()
    results = workers.side_by_side(lambda k: workers.compute(lambda _: (os.getpid(), torch.get_num_threads()), k),
                                   [(0,), (1,)], 1)
    assert results == [(os.getpid(), 1)] * 2
    assert torch.get_num_threads() == before


class Cached:
    """A study's stand-in: a cached property that counts how often this process computed it."""

    computed = 0

    @cached_property
    def reference(self) -> int:
        Cached.computed += 1
        return Cached.computed


def _reference(study: Cached) -> tuple[int, int]:
    return os.getpid(), study.reference


def test_a_worker_computes_what_a_study_caches_once():
    with workers.shared(2):
        results = [workers.compute(_reference, Cached()) for _ in range(6)]
    assert {pid for pid, _ in results} != {os.getpid()}
    assert [value for _, value in results] == [1] * 6  # each worker's first copy, kept: computed once per worker


GAUSSIAN = {"gaussian": {"n_samples": 6, "generations": 4, "seeds": 8}}


def _loky_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "popen_loky" in " ".join(p.cmdline())]


def test_a_worker_keeps_the_studies_it_was_sent_last(monkeypatch):
    monkeypatch.setattr(workers, "_KEPT", workers.OrderedDict())
    monkeypatch.setattr(workers, "_keep", 2)
    monkeypatch.setattr(Cached, "computed", 0)
    values = [workers._with_kept(key, pickle.dumps(Cached()), _reference)[1] for key in ["a", "b", "a", "c", "a"]]
    assert values == [1, 2, 1, 3, 1]  # a is kept throughout
    assert list(workers._KEPT) == ["c", "a"]  # b, used longest ago, was let go


class Large:
    """A study that caches 320 MB: more than loky lets a worker grow before it replaces the worker as leaking."""

    @cached_property
    def features(self) -> np.ndarray:
        return np.ones(40_000_000)


def _pid_with_features(study: Large) -> int:
    return os.getpid() + int(study.features[0]) - 1


def test_a_worker_that_keeps_large_studies_is_not_replaced():
    with workers.shared(2):
        started = {p.pid for p in _loky_children()}
        for _ in range(3):
            time.sleep(1.1)  # loky measures a worker's growth at most once a second
            assert workers.compute(_pid_with_features, Large()) in started
        assert {p.pid for p in _loky_children()} == started


def _fail(k: int) -> None:
    if k == 0:
        time.sleep(0.5)
        raise ValueError("job 0 failed")
    workers.compute(time.sleep, 300)


def test_the_first_failure_kills_the_workers_and_is_raised_at_once():
    started = time.monotonic()
    with pytest.raises(ValueError, match="job 0 failed"):
        workers.side_by_side(_fail, [(0,), (1,), (2,)], 2)
    assert time.monotonic() - started < 60  # not the 300 s the other job computes
    psutil.wait_procs(_loky_children(), timeout=10)
    assert _loky_children() == []


@pytest.mark.parametrize("value", ["0", "two"])
def test_a_bad_number_of_workers_is_one_line_before_anything_runs(tmp_path, monkeypatch, capsys, value):
    params = write_params(tmp_path, **GMM)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUTOPHAGY_WORKERS", value)
    assert main(study_flow, ["gmm"], ["gmm", str(params)]) == 2
    assert capsys.readouterr().err == (
        f"error: AUTOPHAGY_WORKERS={value!r} is not a number of worker processes: set it to a whole number >= 1 "
        "(1 computes in the study's own process), or unset it to use every core\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.slow
def test_two_workers_give_the_numbers_and_prefect_runs_of_one(tmp_path, prefect_api, monkeypatch):
    """The gmm study with 2 workers and with 1: byte-identical tables; with 2, the Prefect API shows each method's
    subflow run under the study's flow run, one completed task run per generation."""
    tables = {}
    for count in (1, 2):
        folder = tmp_path / str(count)
        monkeypatch.setenv("AUTOPHAGY_WORKERS", str(count))
        state = study_flow(study="gmm", params_file=str(write_params(folder, **GMM)), root=str(folder),
                           return_state=True)
        tables[count] = (folder / "metrics/gmm/per_generation.csv").read_bytes()
    assert tables[1] == tables[2]
    point = "weight=0.8,n_samples=50"
    expected = {f"gmm: {m} {point}": [(f"{m} gen {g}", "COMPLETED") for g in range(2)] for m in ("mle", "hyper_mle", "ple")}
    deadline = time.monotonic() + 30  # task runs reach the server as events, recorded a moment later
    while (shown := method_loop_runs(state.state_details.flow_run_id)) != expected and time.monotonic() < deadline:
        time.sleep(0.5)
    assert shown == expected


def _start_study(folder: Path, prefect_api: str | None = None) -> tuple[subprocess.Popen, list[psutil.Process]]:
    """`python -m flows.study gmm` with 2 workers, against `prefect_api` or else its own temporary Prefect server,
    in a process group of its own as in a terminal, once it computes; with its child processes (workers, server)."""
    write_params(folder, gmm={**GMM["gmm"], "generations": 30})
    env = {**subprocess_env(prefect_api), "PYTHONPATH": str(ROOT), "AUTOPHAGY_WORKERS": "2"}
    study = subprocess.Popen([sys.executable, "-m", "flows.study", "gmm", "params.yaml"], cwd=folder, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                             preexec_fn=interruptible)
    deadline = time.monotonic() + 300
    while not list(folder.glob("data/generations/gmm/*/*/gen_001.parquet")):
        assert study.poll() is None and time.monotonic() < deadline, study.communicate()[1][-3000:]
        time.sleep(0.05)
    children = psutil.Process(study.pid).children(recursive=True)
    assert sum("popen_loky" in " ".join(p.cmdline()) for p in children) == 2
    assert any("uvicorn" in p.cmdline() for p in children) == (prefect_api is None)
    return study, children


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_stops_the_study_its_workers_and_its_server_in_one_line(tmp_path):
    study, children = _start_study(tmp_path)
    os.killpg(study.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    _, stderr = study.communicate(timeout=120)
    assert study.returncode == 130, stderr[-3000:]
    assert [line for line in stderr.splitlines() if line.startswith("error:")] == [
        "error: interrupted; rerun the same command to resume at the first unfinished generation"]
    assert "Traceback" not in stderr
    _, alive = psutil.wait_procs(children, timeout=30)
    assert alive == []


@pytest.mark.slow
def test_a_killed_study_takes_its_workers_along(tmp_path, prefect_api):
    study, children = _start_study(tmp_path, prefect_api)
    study.kill()
    study.wait()
    _, alive = psutil.wait_procs(children, timeout=30)
    assert alive == []


def test_a_light_study_computes_in_its_own_process(tmp_path, prefect_api, monkeypatch):
    """The Gaussian study (`light`) starts no worker process even where two are available; the numbers are those
    of one worker."""
    monkeypatch.setenv(workers.ENV, "2")
    seen, done = set(), threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.update(p.pid for p in _loky_children())
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        two = study_flow(study="gaussian", params_file=str(write_params(tmp_path / "two", **GAUSSIAN)),
                         root=str(tmp_path / "two"))
    finally:
        done.set()
        watcher.join()
    assert seen == set()
    monkeypatch.setenv(workers.ENV, "1")
    one = study_flow(study="gaussian", params_file=str(write_params(tmp_path / "one", **GAUSSIAN)),
                     root=str(tmp_path / "one"))
    assert two.equals(one)

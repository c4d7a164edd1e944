"""The whole pipeline for real: `dvc repro` in a temporary git + DVC repository, the Prefect test
server, MLflow on SQLite; resuming after SIGKILL; corrupt and stale data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from flows.cli import main
from flows.study import study_flow
from tasks.infra import storage

from conftest import method_loop_runs, run, subprocess_env, write_params

SMALL = dict(gaussian={"n_samples": 8, "generations": 4, "seeds": 5})


def _dvc(repo: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], repo, env)


@pytest.mark.slow
def test_dvc_repro_versions_every_generation_and_tracks_it(project_copy, prefect_api):
    repo, env = project_copy, subprocess_env(prefect_api)
    write_params(repo, **SMALL)
    before = {p.relative_to(repo) for p in repo.rglob("*") if p.is_file()}
    _dvc(repo, env, "repro", "gaussian")
    folder = repo / "data/generations/gaussian"

    # Every declared out, metric and plot exists; every file written lies under one of them, the MLflow
    # store, the locks or DVC's and git's own files. (That the stage declares the code it imports is
    # tests/test_registry.py's static check.)
    stage = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]["gaussian"]
    outs = [next(iter(o)) if isinstance(o, dict) else o for kind in ("outs", "metrics", "plots") for o in stage.get(kind, [])]
    assert all((repo / out).exists() for out in outs), outs
    written = {p.relative_to(repo) for p in repo.rglob("*") if p.is_file()} - before
    undeclared = [str(p) for p in written if p.parts[0] not in (".mlflow", ".locks", ".dvc", ".git")
                  and str(p) != "dvc.lock" and p.name != ".gitignore" and "__pycache__" not in p.parts
                  and not any(str(p) == out or str(p).startswith(f"{out}/") for out in outs)]
    assert not undeclared, undeclared

    # A second repro with nothing changed does nothing.
    stamp = (repo / "metrics/gaussian/summary.json").stat().st_mtime_ns
    again = _dvc(repo, env, "repro", "gaussian")
    assert "didn't change" in again.stdout and "up to date" in again.stdout
    assert (repo / "metrics/gaussian/summary.json").stat().st_mtime_ns == stamp

    # Every generation's file is in DVC's directory manifest with the md5 our metadata chain uses.
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    out = next(o for o in lock["stages"]["gaussian"]["outs"] if o["path"] == "data/generations/gaussian")
    digest = out["md5"].removesuffix(".dir")
    manifest = json.loads((repo / ".dvc/cache/files/md5" / digest[:2] / (digest[2:] + ".dir")).read_text())
    dvc_md5 = {entry["relpath"]: entry["md5"] for entry in manifest}
    for method in ("mle", "ple"):
        for g in range(4):
            path = storage.dataset_path(folder / method, g)
            assert dvc_md5[f"{method}/{path.name}"] == storage.md5(path)
            meta = storage.read_metadata(path)
            parent = "" if g == 0 else storage.md5(storage.dataset_path(folder / method, g - 1))
            assert (meta["method"], meta["generation"], meta["parent_md5"]) == (method, str(g), parent)
            table = pd.read_parquet(path)
            assert set(table.columns) >= {"seed", "generation", "method", "source", "x"}
            assert sorted(table.seed.unique()) == list(range(5)) and len(table) == 5 * 8

    metrics = json.loads(_dvc(repo, env, "metrics", "show", "--json").stdout)
    (workspace,) = metrics.values()  # keyed "workspace", or "" in a repository without commits
    summary = workspace["data"]["metrics/gaussian/summary.json"]["data"]
    assert summary["generation"] == 3 and {"mle", "ple"} <= set(summary)
    plots = json.loads(_dvc(repo, env, "plots", "show", "--json").stdout)["data"]
    rows = plots["gaussian_sigma_hat"][0]["content"]["data"]["values"]
    assert {r["method"] for r in rows} == {"mle", "ple"} and len(rows) == 8

    client = MlflowClient(f"sqlite:///{repo / '.mlflow/mlflow.db'}")
    experiment = client.get_experiment_by_name("gaussian")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = {r.data.tags["method"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"mle", "ple"} and len(runs) == 1 + 2  # the parent and its method runs
    for method, child in children.items():
        assert child.data.tags["experiment"] == "gaussian" and child.data.tags["loop_mode"] == "replace"
        assert child.data.params["gaussian.n_samples"] == "8"
        history = client.get_metric_history(child.info.run_id, "sigma_hat_mean")
        assert sorted(m.step for m in history) == [0, 1, 2, 3]
        digests = {d.dataset.name: d.dataset.digest for d in child.inputs.dataset_inputs}
        assert digests == {f"{method}/gen_{g:03d}": dvc_md5[f"{method}/gen_{g:03d}.parquet"] for g in range(4)}
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "sigma_hat_sigma2_hat.png" in artifacts and "summary.json" in artifacts

    # Editing another study, a model it does not use or the reports leaves the stage up to date;
    # editing its own module does not.
    for other in ("tasks/studies/grid.py", "tasks/studies/images/fid.py", "models/vae.py", "tasks/outputs/reports.py"):
        with open(repo / other, "a") as handle:
            handle.write("\n# edited\n")
    assert "up to date" in _dvc(repo, env, "status", "gaussian").stdout
    with open(repo / "tasks/studies/gaussian.py", "a") as handle:
        handle.write("\n# edited\n")
    status = _dvc(repo, env, "status", "gaussian").stdout
    assert "changed deps" in status and "tasks/studies/gaussian.py" in status


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.mark.slow
def test_killed_run_resumes_with_identical_numbers(tmp_path, prefect_api, monkeypatch):
    sections = dict(seed=5, loop={"mode": "fresh", "real_fraction": 0.3},
                    gaussian={"n_samples": 10, "generations": 24, "seeds": 40})
    reference = tmp_path / "reference"
    study_flow(study="gaussian", params_file=str(write_params(reference, **sections)), root=str(reference))

    killed = tmp_path / "killed"
    params = write_params(killed, **sections)
    env = subprocess_env(prefect_api)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    process = subprocess.Popen([sys.executable, "-m", "flows.study", "gaussian", str(params)], cwd=killed, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _wait_for(killed / "data/generations/gaussian/mle/gen_006.json", process)  # ple's loop runs first
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "metrics/gaussian/summary.json").exists()

    kept = [killed / f"data/generations/gaussian/{m}/gen_{g:03d}.parquet" for m in ("mle", "ple") for g in (0, 5)]
    stamps = [path.stat().st_mtime_ns for path in kept]

    monkeypatch.chdir(killed)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the rerun logs to the killed run's store, killed/.mlflow
    assert main(study_flow, ["gaussian"], ["gaussian", str(params)]) == 0
    assert [path.stat().st_mtime_ns for path in kept] == stamps  # resumed, not started over
    client = MlflowClient(f"sqlite:///{killed / '.mlflow/mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("gaussian").experiment_id])
    status = {(r.data.tags["pid"], r.data.tags["level"], r.data.tags.get("method")): r.info.status for r in runs}
    dead, rerun = str(process.pid), str(os.getpid())
    assert status == {(dead, "study", None): "KILLED", (dead, "method", "ple"): "FINISHED",
                      (dead, "method", "mle"): "KILLED", (rerun, "study", None): "FINISHED",
                      (rerun, "method", "mle"): "FINISHED", (rerun, "method", "ple"): "FINISHED"}
    for name in ("per_generation.csv", "curves.csv", "summary.json"):
        assert (killed / "metrics/gaussian" / name).read_bytes() == (reference / "metrics/gaussian" / name).read_bytes()
    for path in sorted((reference / "data/generations").rglob("*.parquet")):
        assert storage.md5(path) == storage.md5(killed / path.relative_to(reference)), path
    assert not list((killed / "data").rglob("*.tmp"))


def test_edited_generation_is_detected_with_the_fix(tmp_path, prefect_api, monkeypatch, capsys):
    params = write_params(tmp_path, **SMALL)
    monkeypatch.chdir(tmp_path)
    assert main(study_flow, ["gaussian"], ["gaussian", str(params)]) == 0
    victim = tmp_path / "data/generations/gaussian/mle/gen_002.parquet"
    victim.write_bytes(victim.read_bytes()[:-100])
    summary = (tmp_path / "metrics/gaussian/summary.json").read_bytes()
    capsys.readouterr()
    assert main(study_flow, ["gaussian"], ["gaussian", str(params)]) == 2
    err = capsys.readouterr().err.strip()
    assert "gen_002.parquet" in err and "`dvc checkout --force data/generations/gaussian`" in err and "\n" not in err
    assert (tmp_path / "metrics/gaussian/summary.json").read_bytes() == summary


def test_changed_params_start_over(tmp_path, prefect_api):
    first = study_flow(study="gaussian", params_file=str(write_params(tmp_path, gaussian={"n_samples": 8, "generations": 6,
                                                                             "seeds": 5})), root=str(tmp_path))
    second = study_flow(study="gaussian", params_file=str(write_params(tmp_path, **SMALL)), root=str(tmp_path))
    assert second.generation.max() == 3 and first.generation.max() == 5
    # No stale generation of the longer run is left behind.
    assert sorted(p.name for p in (tmp_path / "data/generations/gaussian/mle").glob("*.parquet")) == [
        f"gen_{g:03d}.parquet" for g in range(4)]
    # Same seed and sample size: the first four generations agree with the longer run.
    pd.testing.assert_frame_equal(first[first.generation < 4].reset_index(drop=True), second)




@pytest.mark.slow
def test_the_prefect_api_shows_one_task_run_per_method_and_generation(tmp_path, prefect_api):
    """What the Prefect UI shows of a study: the study's flow run, a subflow run per method and, under each, one
    completed task run per generation named "<method> gen <g>"."""
    state = study_flow(study="gaussian", params_file=str(write_params(tmp_path, **SMALL)), root=str(tmp_path),
                       return_state=True)
    parent = state.state_details.flow_run_id
    expected = {f"gaussian: {method} ": [(f"{method} gen {g}", "COMPLETED") for g in range(4)] for method in ("mle", "ple")}
    deadline = time.monotonic() + 30  # task runs reach the server as events, recorded a moment later
    while (shown := method_loop_runs(parent)) != expected and time.monotonic() < deadline:
        time.sleep(0.5)
    assert shown == expected

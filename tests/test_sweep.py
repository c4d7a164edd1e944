"""Sweeps for real: the Prefect test server, MLflow on SQLite, threads and a 2-process Dask cluster."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.client.schemas.sorting import FlowRunSort
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.study import study_flow
from flows.sweep import main, sweep_flow
from tasks.infra import storage

from conftest import run, subprocess_env, wait_for, write_params
from test_fairness_study import TINY as FAIRNESS

TINY = dict(gaussian={"n_samples": 6, "generations": 3, "seeds": 4})


def _sweep_file(root: Path, grid: dict, study: str = "gaussian") -> Path:
    path = root / "sweeps" / "tiny.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"study": study, "params": "params.yaml", "grid": grid}))
    return path


def _methods(slug: str) -> set[str]:
    """The methods a point runs: its `method` coordinate, else both of the gaussian study."""
    return {part.split("=")[1] for part in slug.split(",") if part.startswith("method=")} or {"mle", "ple"}


def _check_points(root: Path, slugs: list[str], uri: str) -> None:
    """Every point has its params, generations and metrics in its own folder, and its MLflow runs."""
    for slug in slugs:
        folder, methods = root / "sweeps" / "tiny" / slug, _methods(slug)
        assert (folder / "params.yaml").exists()
        assert {p.name for p in (folder / "data/generations/gaussian").iterdir()} == methods
        for method in methods:
            generations = sorted(p.name for p in (folder / "data/generations/gaussian" / method).glob("*.parquet"))
            assert generations == ["gen_000.parquet", "gen_001.parquet", "gen_002.parquet"]
        tidy = pd.read_csv(folder / "metrics/gaussian/per_generation.csv")
        assert set(tidy.method) == methods and set(tidy.generation) == {0, 1, 2}
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("gaussian").experiment_id
    (sweep_run,) = client.search_runs([experiment], "tags.sweep = 'tiny' and attributes.run_name LIKE 'sweep %'")
    assert sweep_run.info.status == "FINISHED"
    for slug in slugs:
        runs = client.search_runs([experiment], f"tags.sweep = 'tiny' and tags.sweep_point = '{slug}'")
        (parent,) = [r for r in runs if r.data.tags["mlflow.parentRunId"] == sweep_run.info.run_id]
        children = {r.info.run_id: r.data.tags["method"] for r in runs
                    if r.data.tags["mlflow.parentRunId"] == parent.info.run_id}
        assert set(children.values()) == _methods(slug) and len(runs) == 1 + len(children)
        for axis, value in (part.split("=") for part in slug.split(",")):
            assert all(r.data.tags[f"sweep_{axis}"] == value for r in runs)
            assert value in sweep_run.data.params[axis].split(",")
        assert all(r.info.status == "FINISHED" for r in runs)


@pytest.mark.slow
def test_thread_sweep_runs_every_point_and_resumes(tmp_path, prefect_api, mlflow_store):
    write_params(tmp_path, **TINY)
    sweep = _sweep_file(tmp_path, {"method": ["mle", "ple"], "mode": ["accumulate"]})
    slugs = sweep_flow(sweep_file=str(sweep), root=str(tmp_path))
    assert slugs == ["method=mle,mode=accumulate", "method=ple,mode=accumulate"]
    _check_points(tmp_path, slugs, mlflow_store)
    for slug in slugs:
        params = yaml.safe_load((tmp_path / "sweeps/tiny" / slug / "params.yaml").read_text())
        method, mode = (part.split("=")[1] for part in slug.split(","))
        assert params["gaussian"]["methods"] == [method] and params["loop"]["mode"] == mode

    # A point equals the study run alone with the point's params written by hand.
    alone = tmp_path / "alone"
    write_params(alone, loop={"mode": "accumulate"}, gaussian={**TINY["gaussian"], "methods": ["ple"]})
    study_flow(study="gaussian", params_file=str(alone / "params.yaml"), root=str(alone))
    point = tmp_path / "sweeps/tiny" / slugs[-1]
    for g in range(3):
        assert storage.md5(storage.dataset_path(point / "data/generations/gaussian/ple", g)) == \
            storage.md5(storage.dataset_path(alone / "data/generations/gaussian/ple", g))
    pd.testing.assert_frame_equal(pd.read_csv(point / "metrics/gaussian/per_generation.csv"),
                                  pd.read_csv(alone / "metrics/gaussian/per_generation.csv"))

    kept = sorted((tmp_path / "sweeps/tiny").rglob("*.parquet"))
    stamps = [path.stat().st_mtime_ns for path in kept]
    victim = tmp_path / "sweeps/tiny" / slugs[-1] / "data/generations/gaussian/ple/gen_002.json"
    victim.unlink()  # a point killed in its last generation
    assert sweep_flow(sweep_file=str(sweep), root=str(tmp_path)) == slugs
    assert [path.stat().st_mtime_ns for path in kept] == stamps  # resumed, nothing recomputed
    assert victim.exists()


@pytest.mark.slow
def test_dask_sweep_2x2_on_two_processes(tmp_path, prefect_api, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the default store: the sweep root's .mlflow
    write_params(tmp_path, **TINY)
    sweep = _sweep_file(tmp_path, {"seed": [0, 1], "sampling_bias": [1.0, 0.5]})
    monkeypatch.chdir(tmp_path)
    assert main([str(sweep), "--runner", "dask", "--workers", "2"]) == 0
    slugs = [f"seed={s},sampling_bias={b}" for s in (0, 1) for b in (1.0, 0.5)]
    _check_points(tmp_path, slugs, f"sqlite:///{tmp_path / '.mlflow/mlflow.db'}")
    first, other = (storage.md5(tmp_path / "sweeps/tiny" / slug / "data/generations/gaussian/mle/gen_002.parquet")
                    for slug in slugs[:2])
    assert first != other  # the overrides reached the study
    with get_client(sync_client=True) as client:  # the workers reported to the session's one server
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["study"])),
                                     sort=FlowRunSort.START_TIME_DESC, limit=200)
    roots = {Path(run.parameters["root"]) for run in runs}
    assert {tmp_path.resolve() / "sweeps/tiny" / slug for slug in slugs} <= roots


@pytest.mark.parametrize("grid, message", [
    ({"sampling_bias": [1.0, 1.5]}, "point sampling_bias=1.5: loop.sampling_bias = 1.5"),
    ({"seeds": [0, 1]}, "unknown key 'grid.seeds'; did you mean 'seed'?"),
    ({"seed": [0, 0]}, "grid.seed = [0, 0] is invalid: each value may appear only once"),
    ({"lam": [0.1]}, "grid.lam: the gaussian study has no ple.lam"),
    ({"method": ["hyper_mle"]}, "point method=hyper_mle: gaussian.methods = 'hyper_mle' is invalid: Input should be"),
    ({}, "grid has no axis"),
    ({"lam": [0.1, 1.0]}, "grid.lam: the gmm_lambda study sets its lam values itself (params section gmm)"),
    ({"method": ["mle"]}, "grid.method: the gmm_lambda study sets its method values itself"),
])
def test_bad_sweep_file_is_one_line_and_writes_nothing(tmp_path, capsys, grid, message):
    write_params(tmp_path, **TINY)
    sweep = _sweep_file(tmp_path, grid, study="gmm_lambda" if "gmm_lambda" in message else "gaussian")
    assert main([str(sweep), "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["params.yaml", "sweeps", "tiny.yaml"]


def test_existing_dask_cluster_without_prefect_server_is_one_line(tmp_path, capsys):
    write_params(tmp_path, **TINY)
    sweep = _sweep_file(tmp_path, {"seed": [0, 1]})
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert main([str(sweep), "--root", str(tmp_path), "--runner", "dask", "--address", "tcp://10.0.0.9:8786"]) == 2
    err = capsys.readouterr().err
    assert "--address tcp://10.0.0.9:8786: Dask workers on other hosts cannot reach" in err and err.count("\n") == 1
    assert "0.0.0.0" not in err and "no authentication" in err
    assert not (tmp_path / "sweeps/tiny").exists()


@pytest.mark.slow
def test_fairness_sweep_over_lambda(tmp_path, prefect_api, mlflow_store):
    write_params(tmp_path, fairness={**FAIRNESS, "generations": 2})
    sweep = _sweep_file(tmp_path, {"method": ["ple"], "lam": [0.1, 10.0]}, study="fairness")
    slugs = sweep_flow(sweep_file=str(sweep), root=str(tmp_path))
    assert slugs == ["method=ple,lam=0.1", "method=ple,lam=10.0"]
    folders = [tmp_path / "sweeps/tiny" / slug for slug in slugs]
    for folder, lam in zip(folders, (0.1, 10.0)):
        assert yaml.safe_load((folder / "params.yaml").read_text())["fairness"]["ple"]["lam"] == lam
        tidy = pd.read_csv(folder / "metrics/fairness/per_generation.csv")
        assert set(tidy.method) == {"ple"} and set(tidy.generation) == {0, 1}
    first, other = (storage.md5(folder / "data/generations/fairness/ple/gen_001.parquet") for folder in folders)
    assert first != other  # lambda reached the generator
    client = MlflowClient(mlflow_store)
    experiment = client.get_experiment_by_name("fairness").experiment_id
    for slug, lam in zip(slugs, ("0.1", "10.0")):
        runs = client.search_runs([experiment], f"tags.sweep_point = '{slug}' and tags.level = 'method'")
        assert [r.data.tags["sweep_lam"] for r in runs] == [lam] and runs[0].info.status == "FINISHED"


def _dvc(repo: Path, env: dict[str, str], *args: str) -> str:
    return run([sys.executable, "-m", "dvc", *args], repo, env).stdout


@pytest.mark.slow
def test_dvc_queue_runs_a_two_point_gaussian_sweep(project_copy, prefect_api):
    """The DVC-native sweep of the README: two queued experiments run by two queue workers, each in its own
    temporary copy; both appear in `dvc exp show` with their params and metrics, and their MLflow runs land in
    the repository's store, tagged with the experiment's name."""
    repo, env = project_copy, subprocess_env(prefect_api)
    write_params(repo, gaussian={"n_samples": 6, "generations": 2, "seeds": 3})
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "project"], repo, env)
    for n in (6, 12):
        _dvc(repo, env, "exp", "run", "--queue", "--name", f"n{n}", "-S", f"gaussian.n_samples={n}", "gaussian")
    _dvc(repo, env, "queue", "start", "-j", "2")
    wait_for(lambda: not {"Queued", "Running"} & set(_dvc(repo, env, "queue", "status").split()), 600,
             "the DVC queue")
    assert _dvc(repo, env, "queue", "status").count("Success") == 2, _dvc(repo, env, "queue", "logs", "n6")
    shown = {rev["name"]: rev["data"] for baseline in json.loads(_dvc(repo, env, "exp", "show", "--json"))
             for experiment in baseline.get("experiments") or [] for rev in experiment["revs"]}
    assert set(shown) == {"n6", "n12"}
    for name, data in shown.items():
        assert data["params"]["params.yaml"]["data"]["gaussian"]["n_samples"] == int(name[1:])
        summary = data["metrics"]["metrics/gaussian/summary.json"]["data"]
        assert summary["generation"] == 1 and set(summary) >= {"mle", "ple"}
    client = MlflowClient(f"sqlite:///{repo / '.mlflow' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("gaussian").experiment_id], "tags.level = 'study'")
    assert sorted(r.data.tags.get("dvc_experiment") for r in runs) == ["n12", "n6"]
    assert {r.info.status for r in runs} == {"FINISHED"}

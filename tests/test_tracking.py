"""The background MLflow writer of a study and the link to its chart view (tasks/infra/tracking.py), on a
real SQLite store."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from tasks.infra import storage
from tasks.infra.tracking import StudyTracker, Writer, chart_view, curve_steps, log_generation, main
from tasks.loop import GridPoint, real_dataset

from conftest import free_port


class CountingClient(MlflowClient):
    """A real client that counts its log_batch and log_inputs requests."""

    calls: list[str]

    def log_batch(self, run_id, *args, **kwargs):
        self.calls.append("log_batch")
        return super().log_batch(run_id, *args, **kwargs)

    def log_inputs(self, run_id, *args, **kwargs):
        self.calls.append("log_inputs")
        return super().log_inputs(run_id, *args, **kwargs)


@pytest.fixture
def client(tmp_path) -> CountingClient:
    client = CountingClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.calls = []
    return client


def _datasets(folder: Path, generations: int) -> list[tuple[Path, str]]:
    data = real_dataset(torch.arange(12.0).reshape(2, 6, 1))
    paths = [storage.dataset_path(folder, g) for g in range(generations)]
    return [(path, storage.write_dataset(path, data, {"method": "mle", "generation": str(g)}))
            for g, path in enumerate(paths)]


def test_writes_queued_while_the_writer_is_busy_go_out_together(client, tmp_path):
    run = client.create_run(client.create_experiment("x")).info.run_id
    writer, gate = Writer(client), threading.Event()
    writer.submit(gate.wait)  # the writer is busy until the gate opens
    for g, dataset in enumerate(_datasets(tmp_path, 3)):
        writer.log(run, [Metric("kl_mean", float(g), 0, g)], [dataset])
    gate.set()
    assert writer.close() == []
    assert client.calls == ["log_batch", "log_inputs"]
    assert [(m.step, m.value) for m in client.get_metric_history(run, "kl_mean")] == [(0, 0.0), (1, 1.0), (2, 2.0)]
    inputs = client.get_run(run).inputs.dataset_inputs
    assert sorted((d.dataset.name, d.dataset.digest) for d in inputs) == [
        (f"{tmp_path.name}/gen_{g:03d}", md5) for g, (_, md5) in enumerate(_datasets(tmp_path, 3))]
    assert sorted(json.loads(d.dataset.source)["uri"] for d in inputs) == [
        Path(os.path.relpath(storage.dataset_path(tmp_path, g))).as_posix() for g in range(3)]


def test_a_failed_write_is_raised_by_the_next_log_and_by_close(client):
    writer = Writer(client)
    writer.log("no-such-run", [Metric("kl_mean", 1.0, 0, 0)])
    writer.submit(lambda: None)
    writer.executor.submit(lambda: None).result()  # the failed write has run
    with pytest.raises(MlflowException):
        writer.log("no-such-run", [Metric("kl_mean", 2.0, 0, 1)])
    errors = writer.close()
    assert len(errors) == 1 and isinstance(errors[0], MlflowException)


def test_an_execution_links_the_chart_view_of_its_method_runs(tmp_path):
    """From its first method run on, the experiment's and the parent run's descriptions link a view whose
    filter MLflow answers with exactly the execution's method runs (not its parent)."""
    tracker = StudyTracker("gaussian", tmp_path, {"seed": 0}, {})  # the session's store (MLFLOW_TRACKING_URI)
    client, note = tracker.client, "mlflow.note.content"
    assert note not in client.get_run(tracker.parent_id).data.tags
    runs = [tracker.start_method(method, GridPoint(), {}) for method in ("mle", "ple")]
    tracker.close(ok=True)
    text = client.get_experiment(tracker.experiment_id).tags[note]
    assert client.get_run(tracker.parent_id).data.tags[note] == text and tracker.name in text
    fragment = urlsplit(text[text.index("(#") + 2:text.index(")")])
    assert fragment.path == f"/experiments/{tracker.experiment_id}/runs"
    query = {key: value for key, (value,) in parse_qs(fragment.query).items()}
    assert query["compareRunsMode"] == "CHART" and query["workflowType"] == "machine_learning"
    found = client.search_runs([tracker.experiment_id], query["searchFilter"])
    assert sorted(r.info.run_id for r in found) == sorted(runs)


def test_make_ui_prints_each_experiments_latest_chart_view(tmp_path, capsys, monkeypatch):
    """`python -m tasks.infra.tracking` (what `make ui` prints): a line per experiment with an execution, the UI's
    address followed by the chart view of its latest execution; none for an experiment without one."""
    executions = []
    for _ in range(2):
        tracker = StudyTracker("gaussian", tmp_path, {"seed": 0}, {})  # the session's store (MLFLOW_TRACKING_URI)
        tracker.start_method("mle", GridPoint(), {})
        tracker.close(ok=True)
        executions.append(tracker)
    empty = f"empty-{tmp_path.name}"
    executions[0].client.create_experiment(empty, artifact_location=tmp_path.as_uri())
    assert main(["--ui", "http://127.0.0.1:5123/"]) == 0
    lines = capsys.readouterr().out.splitlines()
    latest = executions[-1]
    assert f"  gaussian: http://127.0.0.1:5123/{chart_view(latest.experiment_id, latest.parent_id)}" in lines
    assert all(line.startswith("  ") and ": http://127.0.0.1:5123/#/experiments/" in line for line in lines)
    assert not any(line.startswith(f"  {empty}:") for line in lines)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # as `make ui` runs it: the repository's own store, here empty
    monkeypatch.chdir(tmp_path)
    assert main([]) == 0
    assert capsys.readouterr().out == "  no study has logged a method run to this store yet (make run)\n"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # a server that is not there
    assert main([]) == 2
    error = capsys.readouterr().err.splitlines()
    assert len(error) == 1 and error[0].startswith("error: the MLflow tracking server"), error
    assert "MLFLOW_TRACKING_URI" in error[0]


def test_a_long_fit_logs_its_curves_at_every_kth_step_and_the_last(tmp_path):
    """2000 optimiser steps reach MLflow as steps 0, 4, ..., 1996 and 1999 with their own values; a short fit whole."""
    tracker = StudyTracker("gaussian", tmp_path, {"seed": 0}, {})
    run = tracker.start_method("ple", GridPoint(), {})
    ((path, md5),) = _datasets(tmp_path, 1)
    log_generation(run, 0, {"kl_mean": 1.0}, path, md5, {"fit": [step / 2 for step in range(2000)],
                                                           "penalty": [1.0] * 20})
    tracker.close(ok=True)
    fit = tracker.client.get_metric_history(run, "train_fit/gen_000")
    assert [(m.step, m.value) for m in fit] == [(step, step / 2) for step in [*range(0, 2000, 4), 1999]]
    assert [m.step for m in tracker.client.get_metric_history(run, "train_penalty/gen_000")] == list(range(20))
    assert curve_steps(0) == [] and curve_steps(1) == [0] and curve_steps(500) == list(range(500))
    assert curve_steps(502) == [*range(0, 502, 2), 501] and all(len(curve_steps(n)) <= 501 for n in range(1, 5000, 7))

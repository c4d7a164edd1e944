"""MLflow tracking: one experiment per study, a parent run per execution and a child run per
method (and grid point), whose artifact `seeds.csv` holds every seed's values.

The tracking URI is `MLFLOW_TRACKING_URI` when set, else a SQLite file in the repository
(`.mlflow/mlflow.db`, artifacts in `.mlflow/artifacts`). Every run carries the same tags:
`level` (study or method), `experiment`, `loop_mode`, `point_keys` (the grid's keys,
comma-separated, '' without a grid), `torch`, `device`, and the `host` and `pid` of the process
(a run left RUNNING by a process that no longer exists is marked KILLED when the study starts
again); method runs add `method`, `point` ('weight=0.95,n_samples=50', '' without a grid) and one
tag per grid key and label (the columns of `per_generation.csv`). A method run's metrics are the
seed statistics `<metric>_mean`, `_se`, `_median` (as `curves.csv`) with step = generation, and
its `seeds.csv` the tidy rows of its seeds (as `per_generation.csv`). Params are logged on the
parent and method runs. Each generation's dataset is an MLflow dataset input of the method run whose
digest is the md5 DVC records for it and whose source is its path relative to the working directory.
A study run as one point of a sweep (`sweep_point`) logs into the sweep's store instead, its
parent run nested under the sweep's run and tagged with the point. Once an execution has a method
run, its parent run's description and the experiment's (`mlflow.note.content`, at the top of the
experiment's page in the UI) link the UI's chart view of its method runs (`chart_view`).

    python -m tasks.infra.tracking [--ui http://127.0.0.1:5000]

prints, for each experiment of the store, the address of that view for its latest execution (what `make ui`
prints): opened, it shows the metrics against generation, a curve per method, without a click.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import json
import os
import re
import socket
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlencode

import mlflow.data
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus
from mlflow.store.tracking import SEARCH_MAX_RESULTS_DEFAULT

from tasks.errors import report
from tasks.infra.lock import alive
from tasks.infra.servers import check_mlflow_server
from tasks.loop import GridPoint


@dataclass(frozen=True)
class Store:
    """A tracking store: its URI and where new experiments keep artifacts (None: the server decides)."""

    uri: str
    artifacts: str | None

    @classmethod
    def of(cls, mlflow_dir: Path) -> Store:
        """`MLFLOW_TRACKING_URI`, else SQLite and artifacts in `mlflow_dir` (created)."""
        if uri := os.environ.get("MLFLOW_TRACKING_URI"):
            return cls(uri, None)
        mlflow_dir.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{(mlflow_dir / 'mlflow.db').resolve()}", (mlflow_dir / "artifacts").resolve().as_uri())


@dataclass(frozen=True)
class SweepPoint:
    """What a study run as one point of a sweep logs under: the sweep's store, run and tags."""

    store: Store
    parent_id: str
    tags: dict[str, str] = field(default_factory=dict)


@functools.cache
def client(uri: str) -> MlflowClient:
    """One client per tracking URI and process: tasks get the URI, never a live client. A SQLite store is
    opened (its tables created or upgraded) under an exclusive lock on `<database>.lock`: two studies
    starting at once on a new store would otherwise both create its tables, and one would fail."""
    if not uri.startswith("sqlite:///"):
        return MlflowClient(uri)
    with open(f"{uri.removeprefix('sqlite:///')}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return MlflowClient(uri)


_SWEEP_POINT: ContextVar[SweepPoint | None] = ContextVar("sweep_point", default=None)


@contextlib.contextmanager
def sweep_point(point: SweepPoint) -> Iterator[None]:
    """Studies started in this context (this thread) log as `point` of a sweep."""
    token = _SWEEP_POINT.set(point)
    try:
        yield
    finally:
        _SWEEP_POINT.reset(token)


def dataset_entity(path: Path, md5: str) -> Dataset:
    """An MLflow dataset for a Parquet file: digest = the file's md5, source = its path relative to the working
    directory, schema as MLflow infers it from the first rows (once per Parquet schema: it takes tens of ms),
    profile from the Parquet footer."""
    parquet = pq.ParquetFile(path)
    key = parquet.schema_arrow.remove_metadata()
    if key not in _MLFLOW_SCHEMAS:
        _MLFLOW_SCHEMAS[key] = _mlflow_schema(parquet)
    source_type, schema = _MLFLOW_SCHEMAS[key]
    rows = parquet.metadata.num_rows
    profile = {"num_rows": rows, "num_elements": rows * parquet.metadata.num_columns}
    return Dataset(name=f"{path.parent.name}/{path.stem}", digest=md5, source_type=source_type,
                   source=json.dumps({"uri": Path(os.path.relpath(path)).as_posix()}), schema=schema,
                   profile=json.dumps(profile))


_MLFLOW_SCHEMAS: dict[pa.Schema, tuple[str, str | None]] = {}


def _mlflow_schema(parquet: pq.ParquetFile) -> tuple[str, str | None]:
    """(source type, schema JSON) that `mlflow.data.from_pandas` gives the first rows of `parquet`."""
    head = next(parquet.iter_batches(batch_size=256)).to_pandas()
    with warnings.catch_warnings():  # MLflow warns of integer columns and of a local-file source
        warnings.simplefilter("ignore", UserWarning)
        entity = mlflow.data.from_pandas(head, source="dataset.parquet")._to_mlflow_entity()
    return entity.source_type, entity.schema


NOTE = "mlflow.note.content"  # a run's or an experiment's description in the UI
LINK = re.compile(r"\]\((#/experiments/[^)]+)\)")  # the Markdown link to a chart view in a description


def chart_view(experiment_id: str, parent_id: str) -> str:
    """The MLflow UI's chart view (URL fragment) of the method runs under `parent_id`: a chart per metric
    against step = generation, a curve per method run. Sorted by name rather than start time, the UI
    lists them flat instead of folded under their parent run (which has no metrics to plot)."""
    query = {"workflowType": "machine_learning", "compareRunsMode": "CHART",
             "searchFilter": f"tags.`mlflow.parentRunId` = '{parent_id}'",
             "orderByKey": "tags.`mlflow.runName`", "orderByAsc": "true"}
    return f"#/experiments/{experiment_id}/runs?{urlencode(query, quote_via=quote)}"


class Writer:
    """MLflow writes sent by one background thread, in the order given, so that the study never waits for them.
    Metrics and dataset inputs queued while the thread is busy go out together: one `log_batch` and one
    `log_inputs` per run. A write that failed is raised by the next `log` (and by `close`)."""

    def __init__(self, client: MlflowClient):
        self.client = client
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-writer")
        self.futures: list[Future] = []
        self.lock = threading.Lock()
        self.queued: list[tuple[str, list[Metric], list[tuple[Path, str]]]] = []

    def log(self, run_id: str, metrics: list[Metric], datasets: Iterable[tuple[Path, str]] = ()) -> None:
        """Queue `metrics` and the Parquet files `datasets` ((path, md5): training inputs) for run `run_id`."""
        failed = next((f.exception() for f in self.futures if f.done() and f.exception() is not None), None)
        if failed is not None:
            raise failed
        with self.lock:
            self.queued.append((run_id, metrics, list(datasets)))
        self.submit(self._send_queued)

    def submit(self, fn: Callable[..., object], *args: object) -> None:
        self.futures.append(self.executor.submit(fn, *args))

    def _send_queued(self) -> None:
        with self.lock:
            queued, self.queued = self.queued, []
        runs: dict[str, tuple[list[Metric], list[tuple[Path, str]]]] = {}
        for run_id, metrics, datasets in queued:
            run_metrics, run_datasets = runs.setdefault(run_id, ([], []))
            run_metrics += metrics
            run_datasets += datasets
        context = InputTag(key="mlflow.data.context", value="training")
        for run_id, (metrics, datasets) in runs.items():
            if metrics:  # the client splits it into batches MLflow accepts
                self.client.log_batch(run_id, metrics=metrics)
            if datasets:
                self.client.log_inputs(run_id, datasets=[DatasetInput(dataset_entity(path, md5), tags=[context])
                                                         for path, md5 in datasets])

    def close(self) -> list[BaseException]:
        """Wait for every write; the exceptions of those that failed."""
        self.executor.shutdown(wait=True)
        return [f.exception() for f in self.futures if f.exception() is not None]


SEEDS = "seeds.csv"  # a method run's artifact: the values of every seed
CURVE_POINTS = 500  # a fit's curves are logged at about this many steps each (every k-th and the last)
_WRITERS: dict[str, Writer] = {}  # method run id -> the writer of the study that started it


class StudyTracker:
    """A parent run for one execution of a study, a child run per method and grid point.

    Inside `sweep_point` the parent run is itself a child of the sweep's run, in the sweep's store."""

    def __init__(self, experiment: str, mlflow_dir: Path, params: dict[str, object], tags: dict[str, str],
                 name: str | None = None):
        point = _SWEEP_POINT.get()
        self.store = point.store if point else Store.of(mlflow_dir)
        self.client = client(self.store.uri)
        self.params = [Param(key, str(value)) for key, value in params.items()]
        self.tags = {"experiment": experiment, **tags, **(point.tags if point else {}),
                     "host": socket.gethostname(), "pid": str(os.getpid())}
        self.methods: dict[str, tuple[str, dict[str, str]]] = {}  # method run id -> (name, tags)
        self.writer = Writer(self.client)
        self.lock = threading.Lock()  # method loops running side by side start and finish their runs
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=self.store.artifacts)
        else:
            self.experiment_id = found.experiment_id
            self._mark_killed()
        nested = {"mlflow.parentRunId": point.parent_id} if point else {}
        self.name = name or f"{experiment} {time.strftime('%Y-%m-%d %H:%M:%S')}"
        self.parent_id = self._run(self.name, {"level": "study", **self.tags, **nested})
        self.client.log_batch(self.parent_id, params=self.params)

    def _mark_killed(self) -> None:
        """Runs of this experiment left RUNNING by a process of this host that no longer exists become KILLED."""
        host = self.tags["host"].replace("'", "")
        for run in self.client.search_runs([self.experiment_id], f"attributes.status = 'RUNNING' and "
                                           f"tags.host = '{host}'", max_results=SEARCH_MAX_RESULTS_DEFAULT):
            if not alive(int(run.data.tags.get("pid", "-1"))):
                self.client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))

    def _run(self, name: str, tags: dict[str, str], parent: str | None = None) -> str:
        tags = tags if parent is None else {**tags, "mlflow.parentRunId": parent}
        return self.client.create_run(self.experiment_id, tags=tags, run_name=name).info.run_id

    def start_method(self, method: str, point: GridPoint, labels: dict[str, object]) -> str:
        """A child run of the parent for one method at one grid point; the point's keys and the
        study's labels become tags, as they are columns of per_generation.csv."""
        name = " ".join([method, *(f"{k}={v}" for k, v in point.coordinates.items())])
        columns = {k: str(v) for k, v in {**point.coordinates, **labels}.items()}
        tags = {**self.tags, **columns, "method": method, "point": point.name}
        with self.lock:
            run_id = self._run(name, {**tags, "level": "method"}, self.parent_id)
            self.client.log_batch(run_id, params=self.params)
            if not self.methods:
                self._describe()
            self.methods[run_id] = (name, tags)
            _WRITERS[run_id] = self.writer
        return run_id

    def _describe(self) -> None:
        """Link the chart view of this execution's method runs from its parent run's and the experiment's
        descriptions."""
        link = chart_view(self.experiment_id, self.parent_id)
        text = f"[Metrics against generation, one curve per method]({link}) of the execution {self.name}"
        self.client.set_tag(self.parent_id, NOTE, text)
        self.client.set_experiment_tag(self.experiment_id, NOTE, text)

    def log_seeds(self, run_id: str, tidy: pd.DataFrame) -> None:
        """`seeds.csv` of method run `run_id`: its tidy rows (seed, generation, metric, value and the
        point's columns), written by the background thread. One artifact rather than a run per seed:
        100 seeds of two methods took 600 requests that the end of a study waited for."""
        self.writer.submit(self._log_seeds, run_id, tidy)

    def _log_seeds(self, run_id: str, tidy: pd.DataFrame) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / SEEDS
            tidy.to_csv(path, index=False)
            self.client.log_artifact(run_id, str(path))

    def log_artifact(self, path: Path) -> None:
        self.client.log_artifact(self.parent_id, str(path))

    def close(self, ok: bool) -> None:
        """Wait for the writes still being sent, then finish the parent run; a failed write fails the
        parent and is raised (unless the study itself already failed)."""
        errors = self.writer.close()
        for run_id in self.methods:
            _WRITERS.pop(run_id, None)
        self.finish(self.parent_id, ok=ok and not errors)
        if ok and errors:
            raise errors[0]

    def finish(self, run_id: str, ok: bool = True) -> None:
        with self.lock:
            self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED))


def log_generation(run_id: str, generation: int, metrics: dict[str, float], dataset: Path, md5: str,
                   curves: dict[str, list[float]]) -> None:
    """Queue, for method run `run_id`: the metrics of one generation (step = generation), its dataset as a
    training input, and the curves of its fit as `train_<name>/gen_<g>` (g zero-padded to 3 digits) with
    step = optimiser step, at about CURVE_POINTS steps of each (`curve_steps`). Sent in the background by the
    writer of the study that started the run."""
    now = int(time.time() * 1000)
    sent = [Metric(k, v, now, generation) for k, v in metrics.items()]
    sent += [Metric(f"train_{name}/gen_{generation:03d}", values[step], now, step)
             for name, values in curves.items() for step in curve_steps(len(values))]
    _WRITERS[run_id].log(run_id, sent, [(dataset, md5)])


def curve_steps(steps: int, limit: int = CURVE_POINTS) -> list[int]:
    """The optimiser steps of a curve of `steps` that are logged: every k-th from 0, k = ceil(steps / limit), and the
    last; at most limit + 1 (a fit of 2000 steps logs 0, 4, ..., 1996, 1999; one of 20 steps logs every step)."""
    every = max(1, -(-steps // limit))
    return sorted({*range(0, steps, every), steps - 1}) if steps else []


def chart_links(uri: str) -> dict[str, str]:
    """{experiment name: the chart view (URL fragment) of its latest execution's method runs}, by name, for the
    experiments of the store at `uri` whose description links one (each execution writes its own there)."""
    experiments = sorted(client(uri).search_experiments(), key=lambda experiment: experiment.name)
    found = ((experiment.name, LINK.search(experiment.tags.get(NOTE, ""))) for experiment in experiments)
    return {name: match.group(1) for name, match in found if match}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the MLflow UI's address of each experiment's metrics "
                                     "against generation (its latest execution, a curve per method).")
    parser.add_argument("--ui", default="http://127.0.0.1:5000", help="the MLflow UI's address")
    args = parser.parse_args(argv)

    def show() -> None:
        check_mlflow_server()
        links = chart_links(Store.of(Path(".mlflow")).uri)
        for name, link in links.items():
            print(f"  {name}: {args.ui.rstrip('/')}/{link}")
        if not links:
            print("  no study has logged a method run to this store yet (make run)")

    return report(show)


if __name__ == "__main__":
    raise SystemExit(main())

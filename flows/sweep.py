"""A sweep: one study fanned out over a grid of params overrides (`tasks.infra.sweep`), one task per point.

    python -m flows.sweep sweeps/seeds_bias.yaml                        threads in this process
    python -m flows.sweep sweeps/seeds_bias.yaml --runner dask --workers 2   a local Dask cluster
    python -m flows.sweep sweeps/seeds_bias.yaml --runner dask --address tcp://host:8786

Every point runs the study flow with its own root (`sweeps/<name>/<point>/`), so it resumes like
the study does. All points log into one MLflow store (`MLFLOW_TRACKING_URI`, else the sweep
root's `.mlflow/`): one sweep run in the study's experiment, each point's runs nested under it
and tagged `sweep`, `sweep_point` and `sweep_<axis>` per coordinate (a seed run's `seed` tag is
its replicate, not the sweep's global seed).

Dask workers report their task and flow runs to the Prefect API of the process that started the
sweep: `PREFECT_API_URL`, or one temporary server (local cluster only; an existing cluster on
other hosts needs `PREFECT_API_URL` naming a server its workers can reach). From the command line
that temporary server gets a database of its own (temporary servers otherwise share
`~/.prefect/prefect.db` with every other run on the machine). A SQLite-backed server answers
"503 Service Unavailable" while its database is locked, so the sweep's runs retry longer.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, PREFECT_HOME, temporary_settings
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.study import study_flow
from tasks.errors import ParamsError, report
from tasks.infra.prefect_server import prefect_api
from tasks.infra.servers import check_servers
from tasks.infra.sweep import Point, load_sweep, write_point_params
from tasks.infra.tracking import StudyTracker, SweepPoint, sweep_point

Runner = Literal["threads", "dask"]
# A SQLite-backed Prefect server answers 503 while its database is locked; with two or more workers
# writing task runs on a busy machine that outlasted the default 5 retries (about 1 min of back-off).
# The settings travel with every task to the workers; 8 retries back off for up to about 8 min.
CLIENT_RETRIES = 8


def task_runner(runner: Runner, workers: int, address: str | None) -> TaskRunner:
    """Threads in this process, a local Dask cluster of `workers` single-threaded processes, or the
    Dask scheduler at `address`."""
    if runner == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None})


def no_server_for(address: str) -> ParamsError:
    return ParamsError(f"--address {address}: Dask workers on other hosts cannot reach a temporary Prefect server; "
                      "start one on an address they reach (prefect server start --host <a private address>; its API "
                      "has no authentication, so only on a trusted network) and set PREFECT_API_URL")


def api_url(address: str | None) -> str:
    """The Prefect API every worker must use: PREFECT_API_URL, or this process's temporary server."""
    if url := PREFECT_API_URL.value():
        return url
    if address:
        raise no_server_for(address)
    server = SubprocessASGIServer()  # the one this flow already uses; start() is a no-op then
    server.start()
    return server.api_url


@task(name="sweep-point", task_run_name="{point.grid.name}", cache_policy=NO_CACHE)
def run_point(study: str, point: Point, folder: Path, tracking: SweepPoint) -> str:
    """Write the point's params into its folder and run (or resume) the study there."""
    params_file = write_point_params(folder, point)
    with sweep_point(tracking):
        study_flow(study=study, params_file=str(params_file), root=str(folder))
    return point.grid.name


@flow(name="sweep-points", flow_run_name="{name}")
def run_points(name: str, study: str, points: list[Point], folder: Path, sweep: SweepPoint) -> list[str]:
    """One task per point on the flow's task runner; raises the first point's error after all finished.

    `sweep` (store and run id, no live client) travels to Dask workers with every task."""
    futures = [run_point.submit(study, point, folder / point.grid.name, SweepPoint(
        sweep.store, sweep.parent_id, {"sweep": name, "sweep_point": point.grid.name,
                                       **{f"sweep_{k}": str(v) for k, v in point.grid.coordinates.items()}}))
        for point in points]
    wait(futures)
    return [future.result() for future in futures]


@flow(name="sweep", flow_run_name="{sweep_file}", log_prints=True)
def sweep_flow(sweep_file: str = "sweeps/gaussian_bias.yaml", root: str = ".", runner: Runner = "threads",
               workers: int = 2, address: str | None = None) -> list[str]:
    """Run the sweep file's study at every point of its grid; return the points' folder names."""
    sweep = load_sweep(sweep_file, root)
    url = api_url(address if runner == "dask" else None)
    base = Path(root).resolve()
    grid = {axis: ",".join(map(str, values)) for axis, values in sweep.axes.items()}
    name = f"sweep {sweep.name} {time.strftime('%Y-%m-%d %H:%M:%S')}"
    tracker = StudyTracker(sweep.study, base / ".mlflow", {"sweep_file": sweep_file, **grid},
                           {"sweep": sweep.name, "level": "sweep"}, name=name)
    ok = False
    try:
        retries = max(PREFECT_CLIENT_MAX_RETRIES.value(), CLIENT_RETRIES)
        with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_CLIENT_MAX_RETRIES: retries}):
            points = run_points.with_options(task_runner=task_runner(runner, workers, address))
            slugs = points(sweep.name, sweep.study, sweep.points, sweep.folder(base),
                           SweepPoint(tracker.store, tracker.parent_id))
        ok = True
        return slugs
    finally:
        tracker.finish(tracker.parent_id, ok=ok)


@contextlib.contextmanager
def one_server(address: str | None = None) -> Iterator[None]:
    """PREFECT_API_URL as it is, or else a temporary Prefect server with its own database for the duration
    (not for workers of an existing Dask cluster at `address`, which could not reach it)."""
    if PREFECT_API_URL.value():
        yield
        return
    if address:
        raise no_server_for(address)
    with tempfile.TemporaryDirectory() as home, temporary_settings(updates={PREFECT_HOME: home}), prefect_api():
        yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=sweep_flow.__doc__)
    parser.add_argument("sweep_file", help="the sweep file, e.g. sweeps/gaussian_bias.yaml")
    parser.add_argument("--root", default=".", help="the repository root (default: .)")
    parser.add_argument("--runner", choices=["threads", "dask"], default="threads")
    parser.add_argument("--workers", type=int, default=2, help="threads, or local Dask worker processes")
    parser.add_argument("--address", help="with --runner dask: an existing Dask scheduler, e.g. tcp://host:8786")
    args = parser.parse_args(argv)

    def run() -> None:
        load_sweep(args.sweep_file, args.root)
        check_servers()
        with one_server(args.address if args.runner == "dask" else None):
            sweep_flow(sweep_file=args.sweep_file, root=args.root, runner=args.runner, workers=args.workers,
                       address=args.address)

    return report(run)


if __name__ == "__main__":
    sys.exit(main())

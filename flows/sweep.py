"""A sweep: one study fanned out over a grid of params overrides (`tasks.infra.sweep`), one task per point.

    python -m flows.sweep sweeps/seeds_bias.yaml                        threads in this process
    python -m flows.sweep sweeps/seeds_bias.yaml --runner dask --workers 2   a local Dask cluster
    python -m flows.sweep sweeps/seeds_bias.yaml --runner dask --address tcp://host:8786
    python -m flows.sweep sweeps/seeds_bias.yaml --runner pool --pool autophagy    a work pool (make lab)

Every point runs the study flow with its own root (`sweeps/<name>/<point>/`), so it resumes like
the study does. Points on threads send their computations to one pool of as many worker processes
(`tasks.infra.workers.shared`), each point's method loops one after the other. All points log into
one MLflow store (`MLFLOW_TRACKING_URI`, else the sweep root's `.mlflow/`): one sweep run in the
study's experiment, each point's runs nested under it and tagged `sweep`, `sweep_point` and
`sweep_<axis>` per coordinate.

Dask workers report their task and flow runs to the Prefect API of the process that started the
sweep: `PREFECT_API_URL`, or one temporary server (local cluster only; an existing cluster on
other hosts needs `PREFECT_API_URL` naming a server its workers can reach). From the command line
that temporary server gets a database of its own (temporary servers otherwise share
`~/.prefect/prefect.db` with every other run on the machine). A SQLite-backed server answers
"503 Service Unavailable" while its database is locked, so the sweep's runs retry longer.

On a work pool (`--runner pool`, the pool of PREFECT_API_URL) each point is a flow run of the
deployment `sweep-point/<pool>`, registered by the sweep, that a worker of the pool runs in the
repository's folder; it gets the point's params file, root and the sweep's MLflow store and run as
parameters, so the pool's workers must reach the same files and tracking server (one machine, or
shared folders and MLFLOW_TRACKING_URI naming a server).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Literal

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.futures import wait
from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, PREFECT_HOME, PREFECT_UI_URL, \
    temporary_settings
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.cli import quiet_console
from flows.study import study_flow
from tasks.errors import ParamsError, RemoteRunError, report
from tasks.infra.lab import ONE_THREAD, check_pool, default_pool, from_repository
from tasks.infra.prefect_server import prefect_api
from tasks.infra.workers import shared
from tasks.infra.servers import check_servers
from tasks.infra.sweep import Point, load_sweep, write_point_params
from tasks.infra.tracking import StudyTracker, SweepPoint, sweep_point
from tasks.studies import spec

Runner = Literal["threads", "dask", "pool"]
# A SQLite-backed Prefect server answers 503 while its database is locked; with two or more workers
# writing task runs on a busy machine that outlasted the default 5 retries (about 1 min of back-off).
# The settings travel with every task to the workers; 8 retries back off for up to about 8 min.
CLIENT_RETRIES = 8


def task_runner(runner: Runner, workers: int, address: str | None) -> TaskRunner:
    """Threads in this process (for the pool: threads that wait for the points' flow runs), a local Dask
    cluster of `workers` single-threaded processes, or the Dask scheduler at `address`."""
    if runner != "dask":
        return ThreadPoolTaskRunner(max_workers=workers)
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None, "env": ONE_THREAD})


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
    from prefect.server.api.server import SubprocessASGIServer  # the server's app: 2 s of imports, only here

    server = SubprocessASGIServer()  # the one this flow already uses; start() is a no-op then
    server.start()
    return server.api_url


@flow(name="sweep-point")
def point_flow(study: str, params_file: str, root: str, tracking: SweepPoint) -> None:
    """The study at one point of a sweep, logging as that point (`tracking`): a work pool's deployment."""
    with sweep_point(tracking):
        study_flow(study=study, params_file=params_file, root=root)


def point_deployment(pool: str) -> str:
    """Register `point_flow` on the work pool `pool`, loaded from the repository's folder; its deployment's name."""
    from_repository(point_flow).to_deployment(name=pool, tags=["sweep"]).apply(work_pool_name=pool)
    return f"{point_flow.name}/{pool}"


@task(name="sweep-point", task_run_name="{point.grid.name}", cache_policy=NO_CACHE)
def run_point(study: str, point: Point, folder: Path, tracking: SweepPoint, deployment: str | None = None) -> str:
    """Write the point's params into its folder and run (or resume) the study there: here, or as a flow run of
    `deployment` on its work pool, waited for."""
    params_file = write_point_params(folder, point)
    if deployment is None:
        point_flow.fn(study, str(params_file), str(folder), tracking)
        return point.grid.name
    run = run_deployment(deployment, flow_run_name=point.grid.name, poll_interval=2, parameters={
        "study": study, "params_file": str(params_file), "root": str(folder), "tracking": asdict(tracking)})
    if not run.state.is_completed():
        raise failed_point(point, run)
    return point.grid.name


def failed_point(point: Point, run: FlowRun) -> RemoteRunError:
    """One line for a point whose flow run on the pool ended without completing: its state, the first line of the
    state's message (the error the point raised) and where the run's logs are."""
    reason = (run.state.message or "no message").strip().splitlines()[0]
    return RemoteRunError(f"point {point.grid.name}: flow run {run.name} ended {run.state.type.value}: {reason}; its "
                          f"logs are at {PREFECT_UI_URL.value()}/runs/flow-run/{run.id}; fix that and rerun the sweep "
                          "to resume")


@flow(name="sweep-points", flow_run_name="{name}")
def run_points(name: str, study: str, points: list[Point], folder: Path, sweep: SweepPoint,
               deployment: str | None = None) -> list[str]:
    """One task per point on the flow's task runner (each a flow run of `deployment` when given); raises the first
    point's error after all finished.

    `sweep` (store and run id, no live client) travels to Dask workers with every task."""
    futures = [run_point.submit(study, point, folder / point.grid.name, SweepPoint(
        sweep.store, sweep.parent_id, {"sweep": name, "sweep_point": point.grid.name,
                                       **{f"sweep_{k}": str(v) for k, v in point.grid.coordinates.items()}}),
        deployment) for point in points]
    wait(futures)
    return [future.result() for future in futures]


@flow(name="sweep", flow_run_name="{sweep_file}", log_prints=True)
def sweep_flow(sweep_file: str = "sweeps/gaussian_bias.yaml", root: str = ".", runner: Runner = "threads",
               workers: int = 2, address: str | None = None, pool: str | None = None) -> list[str]:
    """Run the sweep file's study at every point of its grid; return the points' folder names."""
    sweep = load_sweep(sweep_file, root)
    pool = pool or default_pool()
    if runner == "pool":
        check_pool(pool)
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
            deployment = point_deployment(pool) if runner == "pool" else None
            in_flight = len(sweep.points) if deployment else workers  # the pool's workers set the pace
            points = run_points.with_options(task_runner=task_runner(runner, in_flight, address))
            pooled = runner == "threads" and not spec(sweep.study).light  # the threads' computations
            with shared(in_flight if pooled else 1):
                slugs = points(sweep.name, sweep.study, sweep.points, sweep.folder(base),
                               SweepPoint(tracker.store, tracker.parent_id), deployment)
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
    parser.add_argument("--runner", choices=["threads", "dask", "pool"], default="threads")
    parser.add_argument("--workers", type=int, default=2, help="threads, or local Dask worker processes")
    parser.add_argument("--address", help="with --runner dask: an existing Dask scheduler, e.g. tcp://host:8786")
    parser.add_argument("--pool", default=default_pool(), help="with --runner pool: the work pool of PREFECT_API_URL "
                        "(default: LAB_POOL, else autophagy)")
    args = parser.parse_args(argv)

    def run() -> None:
        load_sweep(args.sweep_file, args.root)
        check_servers()
        if args.runner == "pool":
            check_pool(args.pool)
        with one_server(args.address if args.runner == "dask" else None):
            sweep_flow(sweep_file=args.sweep_file, root=args.root, runner=args.runner, workers=args.workers,
                       address=args.address, pool=args.pool)

    quiet_console()
    return report(run)


if __name__ == "__main__":
    sys.exit(main())

"""Sweeps against serial on compute-bound points, with the lab's PostgreSQL-backed servers.

A 4-point sweep of the gmm study (seed x lam, ple only: hypernetwork fits) at one grid point, run
- serially (one thread),
- on 2 threads of this process, whose computations go to 2 worker processes (tasks/infra/workers.py),
- on a local Dask cluster of 2 single-threaded worker processes (cluster start included),
- on the lab's work pool of 2 process workers (each point a flow run in a new process),
each in a fresh root, every run reporting to one Prefect server and one MLflow server on PostgreSQL
(`make lab`, started here in a temporary folder). Prints each wall time, its speed-up over serial,
and the per-point overhead of each runner: the wall time of a sweep of 4 near-empty points (the
Gaussian study, one seed, one generation) divided by 4.

    python benchmarks/sweep.py [--seeds 32 --steps 2000 --generations 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

RUNNERS = [("serial (1 thread)", "threads", 1), ("2 threads", "threads", 2), ("Dask, 2 processes", "dask", 2),
           ("work pool, 2 workers", "pool", 2)]
POOL = "bench"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_lab(folder: Path) -> subprocess.Popen:
    """`python -m tasks.infra.lab` in `folder` on free ports, with a work pool of 2 workers; returns once it is ready
    and its servers are this process's PREFECT_API_URL and MLFLOW_TRACKING_URI."""
    env = {**os.environ, "PREFECT_PORT": str(free_port()), "MLFLOW_PORT": str(free_port()),
           "LAB_PG_PORT": str(free_port()), "LAB_POOL": POOL, "LAB_WORKERS": "2"}
    lab = subprocess.Popen([sys.executable, "-m", "tasks.infra.lab", "--dir", str(folder / "lab")], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, text=True)
    for line in lab.stdout:
        if line.startswith("  export "):
            key, value = line.split()[1].split("=", 1)
            os.environ[key] = value
        if line.startswith("Prefect UI"):
            return lab
    raise SystemExit(f"the lab did not start (exit code {lab.wait()}); its logs are in {folder / 'lab/logs'}")


def sweep_root(folder: Path, study: str, section: dict, grid: dict) -> Path:
    """`folder` with the project's params.yaml, the study's section updated, and sweeps/bench.yaml."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params[study].update(section)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    (folder / "sweeps").mkdir()
    (folder / "sweeps/bench.yaml").write_text(yaml.safe_dump({"study": study, "grid": grid}))
    return folder


def sweep_seconds(root: Path, runner: str, workers: int) -> float:
    from flows.sweep import sweep_flow

    start = time.perf_counter()
    sweep_flow(sweep_file=str(root / "sweeps/bench.yaml"), root=str(root), runner=runner, workers=workers, pool=POOL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2000, help="gmm.ple.steps: optimiser steps per ple fit")
    parser.add_argument("--generations", type=int, default=5)
    args = parser.parse_args()
    gmm = {"grid": {"weight": [0.8], "n_samples": [50]}, "generations": args.generations, "seeds": args.seeds,
           "methods": ["ple"], "ple": {"lam": 0.1, "steps": args.steps, "batch_fraction": 0.25}}
    empty = {"n_samples": 4, "generations": 1, "seeds": 1}
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)  # run as root, PostgreSQL runs as the postgres user, which must reach its folder
        lab = start_lab(Path(tmp))
        try:
            walls, overheads = {}, {}
            for label, runner, workers in RUNNERS:
                with tempfile.TemporaryDirectory() as points, tempfile.TemporaryDirectory() as blank:
                    walls[label] = sweep_seconds(sweep_root(Path(points), "gmm", gmm, {"seed": [0, 1],
                                                                                       "lam": [0.1, 1.0]}),
                                                 runner, workers)
                    overheads[label] = sweep_seconds(sweep_root(Path(blank), "gaussian", empty, {"seed": [0, 1, 2, 3]}),
                                                     runner, workers) / 4
        finally:
            lab.terminate()
            lab.wait()
    serial = walls[RUNNERS[0][0]]
    print(f"gmm study, 4 points (seed x lam), ple, {args.seeds} seeds x {args.generations} generations x "
          f"{args.steps} steps; Prefect and MLflow on PostgreSQL")
    for label, _, _ in RUNNERS:
        print(f"{label:<22}: {walls[label]:7.1f} s, {serial / walls[label]:5.2f}x serial, "
              f"overhead per point {overheads[label]:5.1f} s")


if __name__ == "__main__":
    main()

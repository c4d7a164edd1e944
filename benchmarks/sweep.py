"""Sweeps and orchestration overhead, measured on the Gaussian study (mle + ple, replace loop).

Prints, measured in this one run:
- the wall time of a 4-point sweep (2 seeds x 2 sampling biases) run serially (one thread) and on
  a local Dask cluster of 2 single-threaded worker processes (cluster start included), and their ratio;
- the overhead per generation (one method) that orchestration adds to the same study:
  (a) compute only: the flow's task functions chained in a Python loop, no Prefect, MLflow or I/O;
  (b) the Prefect flow (task runs, MLflow logging, Parquet and records), marginal cost per
      generation from two runs of different length, so fixed costs (MLflow tables, figures) cancel;
  (c) `dvc repro gaussian` in a temporary git + DVC copy of the project (process and temporary
      Prefect server start, DVC hashing and caching included);
  (a) to (b) and the sweeps share one temporary Prefect server, started before any measurement;
  each as seconds per generation and as a share of its wall time.

    python benchmarks/sweep.py [--seeds 100 --n 100 --generations 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # every run logs into its temporary root's .mlflow

from gaussian_vectorisation import compute_seconds, repro_seconds  # noqa: E402

from flows.study import study_flow  # noqa: E402
from flows.sweep import one_server, sweep_flow  # noqa: E402

METHODS = 2  # mle and ple


def study_root(folder: Path, seeds: int, n: int, generations: int) -> Path:
    """`folder` with the project's params.yaml shrunk to the benchmark's Gaussian study."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["loop"]["mode"] = "replace"
    params["gaussian"].update(n_samples=n, generations=generations, seeds=seeds, distribution="normal")
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    return folder


def sweep_seconds(size: dict, runner: str, workers: int) -> float:
    """Wall time of the 4-point sweep in a fresh root."""
    with tempfile.TemporaryDirectory() as tmp:
        root = study_root(Path(tmp), **size)
        (root / "sweeps").mkdir()
        sweep = root / "sweeps" / "bench.yaml"
        sweep.write_text(yaml.safe_dump({"study": "gaussian", "grid": {"seed": [0, 1], "sampling_bias": [1.0, 0.9]}}))
        start = time.perf_counter()
        sweep_flow(sweep_file=str(sweep), root=str(root), runner=runner, workers=workers)
        return time.perf_counter() - start


def flow_seconds(size: dict) -> float:
    """Wall time of the Gaussian flow in this process (its Prefect server already running), fresh root."""
    with tempfile.TemporaryDirectory() as tmp:
        root = study_root(Path(tmp), **size)
        start = time.perf_counter()
        study_flow(study="gaussian", params_file=str(root / "params.yaml"), root=str(root))
        return time.perf_counter() - start


def line(label: str, wall: float, compute: float, generations: int) -> None:
    overhead = (wall - compute) / (METHODS * generations)
    print(f"{label:<34}: {wall / (METHODS * generations) * 1000:8.1f} ms/generation, overhead "
          f"{overhead * 1000:8.1f} ms = {(wall - compute) / wall:6.1%} of the wall time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--generations", type=int, default=20)
    args = parser.parse_args()
    size = dict(seeds=args.seeds, n=args.n, generations=args.generations)
    short = {**size, "generations": max(1, args.generations // 4)}
    with one_server():  # started here, outside every measurement; (c) starts its own
        measure(args, size, short)


def measure(args: argparse.Namespace, size: dict, short: dict) -> None:
    """Run every measurement and print the results."""
    serial = sweep_seconds(size, "threads", 1)
    dask = sweep_seconds(size, "dask", 2)
    print(f"Gaussian study, {args.seeds} seeds x {args.generations} generations x n={args.n}, mle + ple")
    print(f"4-point sweep, serial (1 thread)  : {serial:8.1f} s")
    print(f"4-point sweep, Dask 2 processes   : {dask:8.1f} s (cluster start included)")
    print(f"speed-up of the Dask cluster      : {serial / dask:8.2f} x")

    compute = min(compute_seconds(seeds=args.seeds, n=args.n, generations=args.generations, per_seed=False)
                  for _ in range(3))
    compute_short = min(compute_seconds(seeds=args.seeds, n=args.n, generations=short["generations"], per_seed=False)
                        for _ in range(3))
    flow_long, flow_short = flow_seconds(size), flow_seconds(short)
    repro = repro_seconds(**size)
    print(f"(a) compute only                  : {compute / (METHODS * args.generations) * 1000:8.1f} ms/generation")
    marginal = args.generations - short["generations"]
    line("(b) Prefect flow, marginal", (flow_long - flow_short) / marginal * args.generations,
         (compute - compute_short) / marginal * args.generations, args.generations)
    line("(b) Prefect flow, whole run", flow_long, compute, args.generations)
    line("(c) dvc repro, whole run", repro, compute, args.generations)
    print(f"dvc repro / flow wall time        : {repro / flow_long:8.2f} x")
    print(f"flow / compute wall time          : {flow_long / compute:8.0f} x")


if __name__ == "__main__":
    main()

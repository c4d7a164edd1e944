"""What a study costs beyond its compute, run as `dvc repro` runs it, against a Prefect server already up.

The Gaussian study (100 seeds, n = 12, mle + ple, replace loop) as a process, `python -m flows.study
gaussian`, at G = 5 and G = 105 generations in one project folder (its MLflow store made by a first,
unmeasured run). With W(G) the wall time and M = 2 methods:

    marginal cost per method-generation  m = (W(105) - W(5)) / (100 M)
    fixed cost                           F = W(5) - 5 M m      (imports, MLflow, publishing, exit)

and, beside them, the compute of one method-generation (the study's own fit, evaluate, sample and build,
no Prefect, MLflow or I/O), the time to import the flow's modules and the MLflow SQLite store, and where
the marginal cost goes: the CPU time per method-generation of the study's process and of the Prefect
server (SQLite), which share the machine's cores. The server records each task run after the study has
sent it, so its CPU is counted until it is idle again. Prints each, and the shares of the fixed cost,
the compute and the orchestration's marginal cost in W(105).

    python benchmarks/orchestration.py [--short 5 --long 105 --seeds 100 --n 12]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # every run logs into the folder's .mlflow

from gaussian_vectorisation import compute_seconds  # noqa: E402

from tasks.infra.prefect_server import temporary_server  # noqa: E402

METHODS = 2  # mle and ple
IMPORTS = "import flows.study, mlflow.store.tracking.sqlalchemy_store"


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's ended and waited-for children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_until_idle(server: psutil.Process, poll: float = 0.5) -> float:
    """The server's CPU seconds once a poll interval has passed without it using 2% of a core."""
    before = sum(server.cpu_times()[:2])
    while True:
        time.sleep(poll)
        now = sum(server.cpu_times()[:2])
        if now - before < 0.02 * poll:
            return now
        before = now


def study_cost(folder: Path, env: dict[str, str], server: psutil.Process, seeds: int, n: int,
               generations: int) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds of the study's process, CPU seconds of the Prefect server) of `python -m
    flows.study gaussian params.yaml` in `folder` with the study shrunk to this size."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["loop"]["mode"] = "replace"
    params["gaussian"].update(n_samples=n, generations=generations, seeds=seeds, distribution="normal")
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    server_before, study_before = cpu_until_idle(server), children_cpu()
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flows.study", "gaussian", "params.yaml"], cwd=folder, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    return wall, children_cpu() - study_before, cpu_until_idle(server) - server_before


def import_seconds(env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORTS], env=env, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", type=int, default=5)
    parser.add_argument("--long", type=int, default=105)
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--n", type=int, default=12)
    args = parser.parse_args()
    size = dict(seeds=args.seeds, n=args.n)
    with temporary_server() as url, tempfile.TemporaryDirectory() as tmp:
        server = next(child for child in psutil.Process().children() if "uvicorn" in child.cmdline())
        env = {**os.environ, "PREFECT_API_URL": url, "PYTHONPATH": str(ROOT)}
        study_cost(Path(tmp), env, server, **size, generations=2)  # the MLflow store and the server's first flow
        short, study_short, server_short = study_cost(Path(tmp), env, server, **size, generations=args.short)
        long, study_long, server_long = study_cost(Path(tmp), env, server, **size, generations=args.long)
        imports = import_seconds(env)
    compute = min(compute_seconds(**size, generations=args.long, per_seed=False) for _ in range(3))
    compute_each = compute / (METHODS * args.long)
    per_generation = METHODS * (args.long - args.short)
    marginal = (long - short) / per_generation
    fixed = short - METHODS * args.short * marginal
    print(f"Gaussian study, {args.seeds} seeds, n={args.n}, mle + ple, against a running Prefect server, "
          f"{len(os.sched_getaffinity(0))} cores")
    print(f"wall time, {args.short:>3} generations          : {short:8.2f} s")
    print(f"wall time, {args.long:>3} generations          : {long:8.2f} s")
    print(f"marginal cost per method-generation: {marginal * 1000:8.1f} ms, of which compute {compute_each * 1000:.1f} ms")
    print(f"  CPU per method-generation        : study process {(study_long - study_short) / per_generation * 1000:.1f}"
          f" ms, Prefect server {(server_long - server_short) / per_generation * 1000:.1f} ms")
    print(f"fixed cost                         : {fixed:8.2f} s, of which imports {imports:.2f} s")
    print(f"shares of the {args.long}-generation run      : fixed {fixed / long:.0%}, compute "
          f"{compute / long:.0%}, orchestration per generation {(marginal - compute_each) * METHODS * args.long / long:.0%}")


if __name__ == "__main__":
    main()

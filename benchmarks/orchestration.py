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

With --baseline, another checkout of the project (e.g. an earlier commit's worktree) is measured the same
way in the same run, against the same server, and the ratios printed.

    python benchmarks/orchestration.py [--short 5 --long 105 --seeds 100 --n 12] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
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


def study_cost(code: Path, folder: Path, url: str, server: psutil.Process, seeds: int, n: int,
               generations: int) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds of the study's process, CPU seconds of the Prefect server) of `python -m
    flows.study gaussian params.yaml` of the project checkout `code`, in `folder`, the study shrunk to this
    size."""
    params = yaml.safe_load((code / "params.yaml").read_text())
    params["loop"]["mode"] = "replace"
    params["gaussian"].update(n_samples=n, generations=generations, seeds=seeds, distribution="normal")
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    server_before, study_before = cpu_until_idle(server), children_cpu()
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flows.study", "gaussian", "params.yaml"], cwd=folder, check=True,
                   env={**os.environ, "PREFECT_API_URL": url, "PYTHONPATH": str(code)}, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    return wall, children_cpu() - study_before, cpu_until_idle(server) - server_before


def import_seconds(code: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORTS], env={**os.environ, "PYTHONPATH": str(code)}, check=True)
    return time.perf_counter() - start


@dataclass
class Cost:
    """What a checkout's study costs: per method-generation (wall, and CPU of the study's process and of the
    server, in seconds) and fixed (wall seconds, and the import time)."""

    marginal: float
    study_cpu: float
    server_cpu: float
    fixed: float
    imports: float
    long_wall: float


def measure(code: Path, url: str, server: psutil.Process, args: argparse.Namespace) -> Cost:
    """The checkout's study at --short and --long generations, in a folder of its own (its MLflow store made by a
    first, unmeasured run)."""
    size = dict(seeds=args.seeds, n=args.n)
    with tempfile.TemporaryDirectory() as tmp:
        study_cost(code, Path(tmp), url, server, **size, generations=2)
        short, study_short, server_short = study_cost(code, Path(tmp), url, server, **size, generations=args.short)
        long, study_long, server_long = study_cost(code, Path(tmp), url, server, **size, generations=args.long)
    per_generation = METHODS * (args.long - args.short)
    marginal = (long - short) / per_generation
    return Cost(marginal, (study_long - study_short) / per_generation, (server_long - server_short) / per_generation,
                short - METHODS * args.short * marginal, import_seconds(code), long)


def report(name: str, cost: Cost, compute_each: float, args: argparse.Namespace) -> None:
    print(f"{name}:")
    print(f"  marginal cost per method-generation: {cost.marginal * 1000:8.1f} ms, of which compute "
          f"{compute_each * 1000:.1f} ms")
    print(f"    CPU per method-generation        : study process {cost.study_cpu * 1000:.1f} ms, Prefect server "
          f"{cost.server_cpu * 1000:.1f} ms")
    print(f"  fixed cost                         : {cost.fixed:8.2f} s, of which imports {cost.imports:.2f} s")
    print(f"  shares of the {args.long}-generation run ({cost.long_wall:.1f} s): fixed "
          f"{cost.fixed / cost.long_wall:.0%}, compute {compute_each * METHODS * args.long / cost.long_wall:.0%}, orchestration per generation "
          f"{(cost.marginal - compute_each) * METHODS * args.long / cost.long_wall:.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", type=int, default=5)
    parser.add_argument("--long", type=int, default=105)
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--n", type=int, default=12)
    parser.add_argument("--baseline", type=Path, help="another checkout of the project (git worktree add DIR "
                        "COMMIT), measured in the same run against the same server")
    args = parser.parse_args()
    with temporary_server() as url:
        server = next(child for child in psutil.Process().children() if "uvicorn" in child.cmdline())
        ours = measure(ROOT, url, server, args)
        baseline = measure(args.baseline.resolve(), url, server, args) if args.baseline else None
    compute = min(compute_seconds(seeds=args.seeds, n=args.n, generations=args.long, per_seed=False) for _ in range(3))
    compute_each = compute / (METHODS * args.long)
    print(f"Gaussian study, {args.seeds} seeds, n={args.n}, mle + ple, {args.short} and {args.long} generations, "
          f"against a running Prefect server, {len(os.sched_getaffinity(0))} cores")
    report("this checkout", ours, compute_each, args)
    if baseline:
        report(f"baseline {args.baseline}", baseline, compute_each, args)
        print(f"baseline / this checkout: marginal cost {baseline.marginal / ours.marginal:.2f}x, fixed cost "
              f"{baseline.fixed / ours.fixed:.2f}x")


if __name__ == "__main__":
    main()

"""What a study costs beyond its compute, run as `dvc repro` runs it, against a Prefect server already up.

The Gaussian study (100 seeds, n = 12, mle + ple, replace loop) as a process, `python -m flows.study
gaussian`, at G = 5 and G = 45 generations in one project folder (its MLflow store made by a first,
unmeasured run). With W(G) the wall time and M = 2 methods:

    marginal cost per method-generation  m = (W(45) - W(5)) / (40 M)
    fixed cost                           F = W(5) - 5 M m      (imports, MLflow, publishing, exit)

and, beside them, the compute of one method-generation (the study's own fit, evaluate, sample and build,
no Prefect, MLflow or I/O) and the time to import the flow's modules. Prints each, and the shares of the
fixed cost, the compute and the orchestration's marginal cost in W(45).

    python benchmarks/orchestration.py [--short 5 --long 45 --seeds 100 --n 12]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # every run logs into the folder's .mlflow

from gaussian_vectorisation import compute_seconds  # noqa: E402

from tasks.infra.prefect_server import temporary_server  # noqa: E402

METHODS = 2  # mle and ple


def study_seconds(folder: Path, env: dict[str, str], seeds: int, n: int, generations: int) -> float:
    """Wall time of `python -m flows.study gaussian params.yaml` in `folder` with the study shrunk to this size."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["loop"]["mode"] = "replace"
    params["gaussian"].update(n_samples=n, generations=generations, seeds=seeds, distribution="normal")
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flows.study", "gaussian", "params.yaml"], cwd=folder, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def import_seconds(env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import flows.study"], env=env, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", type=int, default=5)
    parser.add_argument("--long", type=int, default=45)
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--n", type=int, default=12)
    args = parser.parse_args()
    size = dict(seeds=args.seeds, n=args.n)
    with temporary_server() as url, tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PREFECT_API_URL": url, "PYTHONPATH": str(ROOT)}
        study_seconds(Path(tmp), env, **size, generations=2)  # the MLflow store and the server's first flow
        short = study_seconds(Path(tmp), env, **size, generations=args.short)
        long = study_seconds(Path(tmp), env, **size, generations=args.long)
        imports = import_seconds(env)
    compute = min(compute_seconds(**size, generations=args.long, per_seed=False) for _ in range(3))
    compute_each = compute / (METHODS * args.long)
    marginal = (long - short) / (METHODS * (args.long - args.short))
    fixed = short - METHODS * args.short * marginal
    print(f"Gaussian study, {args.seeds} seeds, n={args.n}, mle + ple, against a running Prefect server")
    print(f"wall time, {args.short:>3} generations          : {short:8.2f} s")
    print(f"wall time, {args.long:>3} generations          : {long:8.2f} s")
    print(f"marginal cost per method-generation: {marginal * 1000:8.1f} ms, of which compute {compute_each * 1000:.1f} ms")
    print(f"fixed cost                         : {fixed:8.2f} s, of which imports {imports:.2f} s")
    print(f"shares of the {args.long}-generation run      : fixed {fixed / long:.0%}, compute "
          f"{compute / long:.0%}, orchestration per generation {(marginal - compute_each) * METHODS * args.long / long:.0%}")


if __name__ == "__main__":
    main()

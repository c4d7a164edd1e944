"""Gaussian study at 100 seeds x 100 generations x n = 100 (MLE and PLE, replace loop).

Prints, measured in this one run:
- compute: the study's fit, evaluate, sample and build chained without Prefect or I/O,
  all seeds in one tensor;
- the same work as a Python loop over seeds (one seed per call), and the ratio of the two;
- the wall time of `dvc repro gaussian` in a temporary copy of the project, and its
  orchestration overhead (wall time minus compute) as a share of the total.

    python benchmarks/gaussian_vectorisation.py [--seeds 100 --generations 100 --n 100]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks import loop, steps  # noqa: E402
from tasks.studies.gaussian import GaussianStudy  # noqa: E402
from tasks.params import LoopParams  # noqa: E402
from tasks.studies.gaussian import GaussianParams  # noqa: E402


def chain(study: GaussianStudy, settings: LoopParams, method: str, generations: int, seed: int = 0) -> None:
    """Generations 0..G-1 of one method, through the same functions the flow's generation task calls, without
    storing anything."""
    data = real0 = loop.real_dataset(study.draw_real(study.n_samples, loop.generator(seed, "real", 0)))
    for g in range(generations):
        model = study.fit(data, method, loop.generator(seed, "fit", method, g))
        study.evaluate(model, data)
        if g + 1 < generations:
            synthetic, _ = steps.sample_model(study, model, study.n_samples, settings, method, seed, g + 1)
            data = steps.build_dataset(study, settings, data, real0, synthetic, method, seed, g + 1)


def compute_seconds(seeds: int, n: int, generations: int, per_seed: bool) -> float:
    settings = LoopParams(mode="replace", real_fraction=0.5, sampling_bias=1.0)
    start = time.perf_counter()
    for method in ("mle", "ple"):
        if per_seed:
            for seed in range(seeds):
                chain(GaussianStudy(GaussianParams(distribution="normal", n_samples=n, generations=generations,
                                                   seeds=1)), settings, method, generations, seed)
        else:
            study = GaussianStudy(GaussianParams(distribution="normal", n_samples=n, generations=generations,
                                                 seeds=seeds))
            chain(study, settings, method, generations)
    return time.perf_counter() - start


def repro_seconds(seeds: int, n: int, generations: int) -> float:
    """Wall time of `dvc repro gaussian` in a fresh git + DVC copy of the project."""
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        for name in ("flows", "tasks", "models", "dvc.yaml", ".dvcignore"):
            copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
            copy(ROOT / name, repo / name)
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params["loop"]["mode"] = "replace"
        params["gaussian"].update(n_samples=n, generations=generations, seeds=seeds, distribution="normal")
        (repo / "params.yaml").write_text(yaml.safe_dump(params))
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        env.pop("MLFLOW_TRACKING_URI", None)
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
        subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True, env=env)
        shutil.copytree(ROOT / ".dvc/plots", repo / ".dvc/plots")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dvc", "repro", "gaussian"], cwd=repo, check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--generations", type=int, default=100)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--skip-repro", action="store_true", help="only compare the compute")
    args = parser.parse_args()
    size = dict(seeds=args.seeds, n=args.n, generations=args.generations)

    vectorised = min(compute_seconds(**size, per_seed=False) for _ in range(3))
    looped = compute_seconds(**size, per_seed=True)
    print(f"Gaussian study, {args.seeds} seeds x {args.generations} generations x n={args.n}, mle + ple")
    print(f"compute, seeds vectorised      : {vectorised:8.3f} s")
    print(f"compute, Python loop over seeds: {looped:8.3f} s")
    print(f"speed-up of vectorising        : {looped / vectorised:8.1f} x")
    if not args.skip_repro:
        wall = repro_seconds(**size)
        overhead = wall - vectorised
        print(f"dvc repro gaussian, wall time  : {wall:8.1f} s")
        print(f"orchestration overhead         : {overhead:8.1f} s = {overhead / wall:.1%} of the total "
              f"(Prefect server start and task runs, MLflow, Parquet, DVC)")
        print(f"overhead per generation        : {overhead / (2 * args.generations) * 1000:8.0f} ms "
              f"(per method and generation)")


if __name__ == "__main__":
    main()

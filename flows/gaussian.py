"""The Gaussian study (PLE paper Fig. 5): MLE vs analytic PLE of sigma across generations.

    python -m flows.gaussian params.yaml      (what `dvc repro gaussian` runs)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from prefect import flow

from flows.cli import main
from flows.self_consuming import run_study
from tasks.figures import plot_curves
from tasks.gaussian_study import GaussianStudy
from tasks.params import load_params
from tasks.paths import StudyPaths


@flow(name="gaussian", log_prints=True)
def gaussian_flow(params_file: str = "params.yaml", root: str = ".") -> pd.DataFrame:
    """Fit N(mu, sigma^2) by MLE and PLE generation after generation; return the tidy metrics."""
    params = load_params(params_file)
    study = GaussianStudy(params.gaussian)

    def figures(tidy: pd.DataFrame, curve_table: pd.DataFrame, paths: StudyPaths) -> list[Path]:
        """sigma_hat and sigma_hat^2 against generation, with the true sigma and the MLE theory."""
        path = paths.figures / "sigma_hat_sigma2_hat.png"
        plot_curves(curve_table, ["sigma_hat", "sigma2_hat"], path,
                    title=f"gaussian, {params.gaussian.distribution} data: {params.loop.mode} loop, "
                          f"n={study.n_samples}, {study.seeds} seeds (mean ± SE, median)",
                    references=study.references(params.loop, params.gaussian.generations))
        return [path]

    return run_study([study], params, Path(root), figures)


if __name__ == "__main__":
    sys.exit(main(gaussian_flow))

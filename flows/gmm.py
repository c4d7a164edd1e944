"""The Gaussian-mixture study (PLE paper Fig. 3): MLE (EM), hyper-MLE and PLE over a grid of
imbalance x sample size, generation after generation.

    python -m flows.gmm params.yaml      (what `dvc repro gmm` runs)
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pandas as pd
from prefect import flow

from flows.cli import main
from flows.self_consuming import run_study
from tasks import gmm_figures
from tasks.gmm_study import GMMStudy
from tasks.params import load_params
from tasks.paths import StudyPaths


@flow(name="gmm", log_prints=True)
def gmm_flow(params_file: str = "params.yaml", root: str = ".") -> pd.DataFrame:
    """Estimate a Gaussian mixture by EM, hyper-MLE and PLE at every grid point; return the tidy metrics."""
    params = load_params(params_file)
    grid, lam = params.gmm.grid, params.gmm.ple.lam
    studies = [GMMStudy(params.gmm, w, n, lam, {"weight": w, "n_samples": n})
               for w, n in itertools.product(grid.weight, grid.n_samples)]

    def figures(tidy: pd.DataFrame, curve_table: pd.DataFrame, paths: StudyPaths) -> list[Path]:
        return [gmm_figures.kl_difference_heatmap(tidy, paths.figures / "kl_difference.png"),
                gmm_figures.kl_curves(curve_table, paths.figures / "kl_curves.png")]

    return run_study(studies, params, Path(root), figures)




if __name__ == "__main__":
    sys.exit(main(gmm_flow))

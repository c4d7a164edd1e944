"""The lambda ablation of PLE on the Gaussian mixture: PLE at every penalty weight of
gmm.lambda_sweep, with mle and hyper_mle (lambda = 0) at the same grid point.

    python -m flows.gmm_lambda params.yaml      (what `dvc repro gmm_lambda` runs)
"""

from __future__ import annotations

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


@flow(name="gmm_lambda", log_prints=True)
def gmm_lambda_flow(params_file: str = "params.yaml", root: str = ".") -> pd.DataFrame:
    """PLE at every lambda of gmm.lambda_sweep, with mle and hyper_mle (lambda = 0) at the same point."""
    params = load_params(params_file)
    sweep = params.gmm.lambda_sweep
    baselines = tuple(m for m in params.methods_of("gmm") if m != "ple")
    studies = [GMMStudy(params.gmm, sweep.weight, sweep.n_samples, 0.0, {"lam": 0.0}, baselines,
                        experiment="gmm_lambda")]
    studies += [GMMStudy(params.gmm, sweep.weight, sweep.n_samples, lam, {"lam": lam}, ("ple",),
                         experiment="gmm_lambda") for lam in sweep.lams]

    def figures(tidy: pd.DataFrame, curve_table: pd.DataFrame, paths: StudyPaths) -> list[Path]:
        return [gmm_figures.final_kl_against_lambda(curve_table, paths.figures / "kl_vs_lambda.png",
                                                    title=f"weight={sweep.weight}, n_samples={sweep.n_samples}")]

    return run_study(studies, params, Path(root), figures)



if __name__ == "__main__":
    sys.exit(main(gmm_lambda_flow))

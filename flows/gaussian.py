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
from tasks.gaussian_study import GaussianStudy
from tasks.params import load_params


@flow(name="gaussian", log_prints=True)
def gaussian_flow(params_file: str = "params.yaml", root: str = ".") -> pd.DataFrame:
    """Fit N(mu, sigma^2) by MLE and PLE generation after generation; return the tidy metrics."""
    params = load_params(params_file)
    return run_study(GaussianStudy(params.gaussian), params, Path(root))


if __name__ == "__main__":
    sys.exit(main(gaussian_flow))

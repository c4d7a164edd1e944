"""The distribution grid (PLE paper Fig. 4): normal, uniform, exponential, Laplace and a
two-component mixture, each family's parameters estimated per generation by MLE, hyper-MLE and PLE.

    python -m flows.grid params.yaml      (what `dvc repro grid` runs)
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from prefect import flow

from flows.cli import main
from flows.self_consuming import run_study
from models.distributions import FAMILIES
from tasks.figures import draw_metric, save
from tasks.grid_study import FamilyStudy
from tasks.params import load_params
from tasks.paths import StudyPaths


def parameter_panels(curve_table: pd.DataFrame, path: Path, title: str) -> Path:
    """One panel per distribution and parameter: mean ± SE and median over seeds per method."""
    panels = [(name, param) for name in curve_table.distribution.unique() for param in FAMILIES[name].truth]
    columns = 4
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for i, (ax, (name, param)) in enumerate(zip(axes.flat, panels)):
        truth = FAMILIES[name].truth[param]
        subset = curve_table[curve_table.distribution == name]
        draw_metric(ax, subset, param, pd.Series(truth, index=subset.generation.unique(), name="true value"),
                    legend=i == 0)
        ax.set_title(f"{name}: {param}", fontsize=9)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title)
    return save(fig, path)


@flow(name="grid", log_prints=True)
def grid_flow(params_file: str = "params.yaml", root: str = ".") -> pd.DataFrame:
    """Estimate every family of the grid by MLE, hyper-MLE and PLE over generations; return the tidy metrics."""
    params = load_params(params_file)
    studies = [FamilyStudy(params.grid, name) for name in params.grid.distributions]

    def figures(tidy: pd.DataFrame, curve_table: pd.DataFrame, paths: StudyPaths) -> list[Path]:
        title = (f"{params.loop.mode} loop, n={params.grid.n_samples}, {params.grid.seeds} seeds, "
                 f"ple lambda={params.grid.ple.lam}")
        return [parameter_panels(curve_table, paths.figures / "parameters.png", title)]

    return run_study(studies, params, Path(root), figures)


if __name__ == "__main__":
    sys.exit(main(grid_flow))

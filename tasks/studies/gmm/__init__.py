"""The Gaussian-mixture studies: `gmm` (PLE paper Fig. 3, a grid of imbalance x sample size) and
`gmm_lambda` (the lambda ablation of PLE at one point of that grid). Both read params section `gmm`.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd

from tasks.infra.paths import StudyPaths
from tasks.loop import GridPoint
from tasks.studies.base import StudySpec
from tasks.studies.gmm import figures as gmm_figures
from tasks.studies.gmm.study import GMMParams, GMMStudy


def build_grid(params, root: Path) -> list[GMMStudy]:
    """One study per (weight, n_samples) of gmm.grid, ple at gmm.ple.lam."""
    section = params.gmm
    return [GMMStudy(section, w, n, section.ple.lam, GridPoint({"weight": w, "n_samples": n}))
            for w, n in itertools.product(section.grid.weight, section.grid.n_samples)]


def build_lambda_sweep(params, root: Path) -> list[GMMStudy]:
    """ple at every form x lambda of gmm.lambda_sweep, with mle and hyper_mle (lambda = 0) at the same point."""
    section, sweep = params.gmm, params.gmm.lambda_sweep
    baselines = tuple(m for m in params.methods_of("gmm") if m != "ple")
    studies = [GMMStudy(section, sweep.weight, sweep.n_samples, 0.0, GridPoint({"form": "none", "lam": 0.0}),
                        baselines, experiment="gmm_lambda")]
    return studies + [GMMStudy(section, sweep.weight, sweep.n_samples, lam, GridPoint({"form": form, "lam": lam}),
                               ("ple",), experiment="gmm_lambda", form=form)
                      for form in sweep.forms for lam in sweep.lams]


def grid_figures(studies, params, tidy: pd.DataFrame, curve_table: pd.DataFrame, paths: StudyPaths) -> list[Path]:
    """The KL curves, and the heatmap of KL_MLE - KL_PLE when both ran (`gmm.methods` may leave one out)."""
    heatmap = ([gmm_figures.kl_difference_heatmap(tidy, paths.figures / "kl_difference.png")]
               if {"mle", "ple"} <= set(tidy.method) else [])
    return [*heatmap, gmm_figures.kl_curves(curve_table, paths.figures / "kl_curves.png")]


def lambda_figures(studies, params, tidy: pd.DataFrame, curve_table: pd.DataFrame, paths: StudyPaths) -> list[Path]:
    sweep = params.gmm.lambda_sweep
    return [gmm_figures.final_kl_against_lambda(curve_table, paths.figures / "kl_vs_lambda.png",
                                                title=f"weight={sweep.weight}, n_samples={sweep.n_samples}")]


GMM = StudySpec(name="gmm", section="gmm", params=GMMParams, build=build_grid, figures=grid_figures,
                report_metrics=("kl", "response"))
GMM_LAMBDA = StudySpec(name="gmm_lambda", section="gmm", params=GMMParams, build=build_lambda_sweep,
                       figures=lambda_figures, report_metrics=("kl", "response"),
                       own_axes=("lam", "method"))

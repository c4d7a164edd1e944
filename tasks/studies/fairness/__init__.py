"""The fairness study: does a classifier trained on the loop's data turn unfair, and which method keeps it fair?

A conditional VAE (given y only) is trained by mle, hyper_mle, ple and the baselines upweight and
oversample on digits whose protected attribute s (inverted contrast) agrees with y 90% of the time;
every generation a classifier of y is retrained on D_g and scored on a balanced real test set
(AIM-Fair's metrics, docs/metrics.md).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tasks.infra.paths import StudyPaths
from tasks.studies.base import StudySpec
from tasks.studies.fairness import figures as fairness_figures
from tasks.studies.fairness.params import FairnessParams
from tasks.studies.fairness.study import build


def figures(studies, params, tidy: pd.DataFrame, curve_table: pd.DataFrame, paths: StudyPaths) -> list[Path]:
    """Fairness curves per downstream mode, the last generation's table, samples of every generation."""
    study = studies[0]
    section, methods = study.params, params.methods_of("fairness")
    title = (f"fairness: conditional VAE on {section.dataset}, y = class >= {section.threshold}, "
             f"s = {section.attribute}, bias {section.bias}, {params.loop.mode} loop, n={section.n_samples}, "
             f"{section.seeds} seeds (mean ± SE, median)")
    return [fairness_figures.curves(curve_table, paths, section.downstream.modes, title),
            fairness_figures.last_generation_table(tidy, paths, section.downstream.modes),
            fairness_figures.samples(study, paths, methods)]


STUDY = StudySpec(name="fairness", section="fairness", params=FairnessParams, build=build, figures=figures,
                  report_metrics=("eo_*", "wga_*", "rare_ratio", "response"),
                  methods=("mle", "hyper_mle", "ple", "upweight", "oversample"))

"""The analytic Gaussian study (PLE paper Fig. 5): MLE vs analytic PLE of sigma across generations.

Generation 0 sees N(0, 1) or U[0, 1] data; every generation fits N(mu, sigma^2) by MLE or by
the analytic PLE estimator of `models.gaussian` (docs/methods.md) and samples the next
generation from it. Metrics per seed: sigma_hat, sigma2_hat, sigma_bias, mu_hat (docs/metrics.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
import torch
from pydantic import Field

from models import gaussian
from models.distributions import FAMILIES
from tasks.curation import Scores, true_density_scores
from tasks.infra.paths import StudyPaths
from tasks.loop import Dataset, split_counts
from tasks.outputs.figures import plot_curves
from tasks.params import LoopParams, StudyParams
from tasks.studies.base import StudyBase, StudySpec


class GaussianParams(StudyParams):
    """The `gaussian:` section."""

    methods: list[Literal["mle", "ple"]] | None = Field(
        default=None, min_length=1, description="overrides the top-level methods; no hypernetwork here")
    distribution: Literal["normal", "uniform"] = Field(default="normal", description="true data: N(0,1) or U[0,1]")
    n_samples: int = Field(ge=2, description="size of every generation's dataset")


@dataclass(frozen=True)
class GaussianStudy(StudyBase):
    params: GaussianParams
    experiment: str = "gaussian"

    @property
    def labels(self) -> dict[str, object]:
        return {"distribution": self.params.distribution}

    @property
    def config(self) -> dict:
        return self.params.model_dump(exclude={"methods"})

    def draw_real(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return gaussian.draw_true(self.params.distribution, self.seeds, n, generator)

    def fit(self, data: Dataset, method: str, generator: torch.Generator) -> gaussian.GaussianFit:
        return gaussian.fit(data.values, method)

    def sample(self, model: gaussian.GaussianFit, n: int, sampling_bias: float,
               generator: torch.Generator) -> torch.Tensor:
        return gaussian.sample(model, n, sampling_bias, generator)

    verifier_groups = ("all",)

    def verify(self, values: torch.Tensor) -> Scores:
        """The density quantile of each point (S, n) under the true law, the grid's normal or uniform family
        (uniform: 1 on [0, 1], 0 off it)."""
        return true_density_scores(FAMILIES[self.params.distribution](), values[..., None])

    def evaluate(self, model: gaussian.GaussianFit, data: Dataset) -> dict[str, torch.Tensor]:
        """sigma_hat, its square, its bias against the true sigma, and mu_hat, per seed."""
        _, true_sigma = gaussian.TRUE_MOMENTS[self.params.distribution]
        return {
            "sigma_hat": model.sigma,
            "sigma2_hat": model.sigma.pow(2),
            "sigma_bias": model.sigma - true_sigma,
            "mu_hat": model.mu,
        }

    def references(self, loop: LoopParams, generations: int) -> dict[str, pd.Series]:
        """Theory curves: E[sigma_hat^2] of MLE in the replace and fresh loops, and the true sigma."""
        _, true_sigma = gaussian.TRUE_MOMENTS[self.params.distribution]
        index = pd.RangeIndex(generations, name="generation")
        refs = {"sigma_hat": pd.Series(true_sigma, index=index, name="true sigma")}
        if loop.mode in ("replace", "fresh"):
            counts = split_counts(loop.mode, self.n_samples, loop.real_fraction, loop.real_points)
            theory = gaussian.expected_mle_variance_fresh(true_sigma**2, self.n_samples, *counts, generations,
                                                          loop.sampling_bias)
            refs["sigma2_hat"] = pd.Series(theory, index=index, name="MLE theory")
        return refs


def build(params, root: Path) -> list[GaussianStudy]:
    return [GaussianStudy(params.gaussian)]


def figures(studies: list[GaussianStudy], params, tidy: pd.DataFrame, curve_table: pd.DataFrame,
            paths: StudyPaths) -> list[Path]:
    """sigma_hat and sigma_hat^2 against generation, with the true sigma and the MLE theory."""
    study, path = studies[0], paths.figures / "sigma_hat_sigma2_hat.png"
    plot_curves(curve_table, ["sigma_hat", "sigma2_hat"], path,
                title=f"gaussian, {study.params.distribution} data: {params.loop.mode} loop, "
                      f"n={study.n_samples}, {study.seeds} seeds (mean ± SE, median)",
                references=study.references(params.loop, study.generations))
    return [path]


STUDY = StudySpec(name="gaussian", section="gaussian", params=GaussianParams, build=build, figures=figures,
                  report_metrics=("sigma_hat", "sigma2_hat"), methods=("mle", "ple"), light=True)

"""The distribution grid (PLE paper Fig. 4): a `tasks.loop.Study` per family, and its figure.

Each family of `models.distributions` is estimated per generation by its closed-form MLE
(`mle`) or by a hypernetwork trained without (`hyper_mle`) or with (`ple`) the PLE penalty.
Metrics per seed: every reported parameter, its bias against the true value (`<param>_bias`),
and for the hypernetwork methods the estimator response (`tasks.response`) to scale: probes are real
draws multiplied by PROBE_SCALES, the statistic the log standard deviation of the fitted model's
samples. The reweighted training of H draws the shares of the data's quartiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import matplotlib.pyplot as plt
import pandas as pd
import torch
from pydantic import Field, field_validator

from models.distributions import FAMILIES, draw_true
from models.ple import Fitted
from tasks.curation import Scores, true_density_scores
from tasks.infra.paths import StudyPaths
from tasks.loop import Dataset, GridPoint
from tasks.methods import HYPERNETWORK_METHODS, fit_method
from tasks.outputs.figures import draw_metric, save
from tasks.params import HyperStudyParams, unique
from tasks.response import Probes, Responsive, probe_generator
from tasks.studies.base import StudyBase, StudySpec

PROBE_SCALES = (0.8, 1.0, 1.25)
STATISTIC_DRAWS = 4000


def quantile_groups(x: torch.Tensor, k: int = 4) -> torch.Tensor:
    """The k-quantile bin (0 .. k-1) of every point of x (S, n, 1) within its seed: (S, n)."""
    rank = x[..., 0].argsort(dim=1).argsort(dim=1)
    return rank * k // x.shape[1]


class GridParams(HyperStudyParams):
    """The `grid:` section: each family's parameters by MLE and hypernetwork PLE."""

    distributions: list[Literal["normal", "uniform", "exponential", "laplace", "mixture"]] = Field(min_length=1)
    n_samples: int = Field(ge=4)

    _unique_distributions = field_validator("distributions")(unique)


@dataclass(frozen=True)
class FamilyStudy(StudyBase, Responsive):
    params: GridParams
    distribution: str
    experiment: str = "grid"

    @cached_property
    def family(self):
        """The family's module, built once (its closed forms do not depend on its weights)."""
        return FAMILIES[self.distribution]()

    @property
    def point(self) -> GridPoint:
        return GridPoint({"distribution": self.distribution})

    @property
    def config(self) -> dict:
        return {**self.params.model_dump(exclude={"methods", "distributions"}), **self.point.coordinates}

    def draw_real(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return draw_true(self.family, self.seeds, n, generator)

    def fit(self, data: Dataset, method: str, generator: torch.Generator) -> Fitted:
        """Closed-form MLE; else hypernetworks with lambda = 0 (hyper_mle) or ple.lam (ple)."""
        groups = quantile_groups(data.values) if method in HYPERNETWORK_METHODS else None
        fitted = fit_method(method, data.values, FAMILIES[self.distribution], self.params.hyper, self.params.ple,
                            generator, closed_form=self.family.mle, groups=groups)
        if fitted.ensemble is not None:
            fitted.estimate = self.readout(fitted.estimate)
        return fitted

    def readout(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.double() for k, v in self.family.readout(weights).items()}

    def probes(self) -> Probes:
        """Real draws of n points, each multiplied by one of PROBE_SCALES; values log(scale)."""
        draws = [self.draw_real(self.n_samples, probe_generator("grid", self.distribution, k)) * c
                 for k, c in enumerate(PROBE_SCALES)]
        return Probes({"log_scale": tuple(math.log(c) for c in PROBE_SCALES)}, tuple(draws))

    def statistics(self, estimate: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """log_scale: log of the standard deviation of STATISTIC_DRAWS samples of the fitted model (a fixed draw)."""
        samples = self.family.sample(estimate, STATISTIC_DRAWS, 1.0, probe_generator("grid", "statistic"))
        return {"log_scale": samples.std(dim=1).reshape(-1).log()}

    def sample(self, model: Fitted, n: int, sampling_bias: float, generator: torch.Generator) -> torch.Tensor:
        return self.family.sample(model.estimate, n, sampling_bias, generator)

    verifier_groups = ("all",)

    def verify(self, values: torch.Tensor) -> Scores:
        """The density quantile of each point under the true law (uniform: 1 on [0, 1], 0 off it)."""
        return true_density_scores(self.family, values)

    def evaluate(self, model: Fitted, data: Dataset) -> dict[str, torch.Tensor]:
        metrics = dict(model.estimate)
        metrics.update({f"{k}_bias": v - self.family.truth[k] for k, v in model.estimate.items()})
        metrics.update(self.response_metrics(model))
        return metrics


def build(params, root: Path) -> list[FamilyStudy]:
    return [FamilyStudy(params.grid, name) for name in params.grid.distributions]


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


def figures(studies, params, tidy: pd.DataFrame, curve_table: pd.DataFrame, paths: StudyPaths) -> list[Path]:
    title = (f"{params.loop.mode} loop, n={params.grid.n_samples}, {params.grid.seeds} seeds, "
             f"ple lambda={params.grid.ple.lam}")
    return [parameter_panels(curve_table, paths.figures / "parameters.png", title)]


STUDY = StudySpec(name="grid", section="grid", params=GridParams, build=build, figures=figures,
                  report_metrics=("*_bias", "response"))

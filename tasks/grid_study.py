"""The distribution grid (PLE paper Fig. 4) as `tasks.loop.Study`s, one per family.

Each family of `models.distributions` is estimated per generation by its closed-form MLE
(`mle`) or by a hypernetwork trained without (`hyper_mle`) or with (`ple`) the PLE penalty.
Metrics per seed: every reported parameter, its bias against the true value (`<param>_bias`),
and for the hypernetwork methods the sensitivity of `HyperEnsemble.sensitivity`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from models.distributions import FAMILIES, draw_true
from models.hypernet import HyperConfig
from models.ple import Fitted, PLEConfig, fit_ensemble
from tasks.loop import Dataset, SeedsAndGenerations
from tasks.params import GridParams


@dataclass(frozen=True)
class FamilyStudy(SeedsAndGenerations):
    params: GridParams
    distribution: str
    experiment: str = "grid"
    labels = {}

    @cached_property
    def family(self):
        """The family's module, built once (its closed forms do not depend on its weights)."""
        return FAMILIES[self.distribution]()

    @property
    def point(self) -> dict[str, object]:
        return {"distribution": self.distribution}

    @property
    def config(self) -> dict:
        return {**self.params.model_dump(exclude={"methods", "distributions"}), **self.point}

    def draw_real(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return draw_true(self.family, self.seeds, n, generator)

    def fit(self, data: Dataset, method: str, generator: torch.Generator) -> Fitted:
        """Closed-form MLE; else hypernetworks with lambda = 0 (hyper_mle) or ple.lam (ple)."""
        if method == "mle":
            return Fitted(self.family.mle(data.values))
        config = PLEConfig(lam=0.0 if method == "hyper_mle" else self.params.ple.lam,
                           **self.params.ple.model_dump(exclude={"lam"}))
        fitted = fit_ensemble(FAMILIES[self.distribution], data.values,
                              HyperConfig(**self.params.hyper.model_dump()), config, generator)
        fitted.estimate = {k: v.double() for k, v in self.family.readout(fitted.estimate).items()}
        return fitted

    def sample(self, model: Fitted, n: int, sampling_bias: float, generator: torch.Generator) -> torch.Tensor:
        return self.family.sample(model.estimate, n, sampling_bias, generator)

    def evaluate(self, model: Fitted, data: Dataset) -> dict[str, torch.Tensor]:
        metrics = dict(model.estimate)
        metrics.update({f"{k}_bias": v - self.family.truth[k] for k, v in model.estimate.items()})
        if model.ensemble is not None:
            metrics["sensitivity"] = model.ensemble.sensitivity(data.values.float())
        return metrics

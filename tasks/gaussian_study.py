"""The analytic Gaussian study (PLE paper Fig. 5) as a `tasks.loop.Study`.

Generation 0 sees N(0, 1) or U[0, 1] data; every generation fits N(mu, sigma^2) by MLE or by
the analytic PLE estimator of `models.gaussian` and samples the next generation from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from models import gaussian
from tasks.loop import Dataset, SeedsAndGenerations
from tasks.params import GaussianParams, LoopParams


@dataclass(frozen=True)
class GaussianStudy(SeedsAndGenerations):
    params: GaussianParams
    experiment: str = "gaussian"

    point = {}

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
        """Theory curves: E[sigma_hat^2] of MLE in the replace loop, and the true sigma."""
        _, true_sigma = gaussian.TRUE_MOMENTS[self.params.distribution]
        index = pd.RangeIndex(generations, name="generation")
        refs = {"sigma_hat": pd.Series(true_sigma, index=index, name="true sigma")}
        if loop.mode == "replace":
            theory = [gaussian.expected_mle_variance(true_sigma**2, self.n_samples, g, loop.sampling_bias)
                      for g in index]
            refs["sigma2_hat"] = pd.Series(theory, index=index, name="MLE theory")
        return refs

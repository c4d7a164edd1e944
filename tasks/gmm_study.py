"""The Gaussian-mixture study (PLE paper Fig. 3) as a `tasks.loop.Study`, one per grid point.

True data: a K-component diagonal mixture whose first component has weight `weight` (the grid's
imbalance) and the others share 1 - weight. Methods: `mle` (EM), `hyper_mle` (hypernetwork,
lambda = 0) and `ple` (hypernetwork with the penalty). Metrics per seed: KL(p_true || q_est) by
Monte Carlo and its Monte Carlo standard error, the estimated weights, means and standard
deviations (components ordered by their first mean coordinate), and for the hypernetwork methods
the final fit and penalty terms and the sensitivity ||H(X1) - H(X2)|| / ||H(X1)|| on two
disjoint halves X1, X2 of the data (near 0: the hypernetwork ignores its input).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.gmm import GMMGenerator, Mixture, em, kl_monte_carlo
from models.hypernet import HyperConfig
from models.ple import Fitted, PLEConfig, fit_ensemble
from tasks.loop import Dataset, SeedsAndGenerations
from tasks.params import GMMParams


@dataclass(frozen=True)
class GMMStudy(SeedsAndGenerations):
    """One grid point: majority weight, sample size and the penalty weight lam of method ple.

    `point` names the point in outputs; `methods`, when set, restricts the methods run there.
    """

    params: GMMParams
    weight: float
    n: int
    lam: float
    point: dict[str, object]
    methods: tuple[str, ...] | None = None
    experiment: str = "gmm"
    labels = {}

    @property
    def n_samples(self) -> int:
        return self.n

    @property
    def config(self) -> dict:
        settings = self.params.model_dump(exclude={"methods", "grid", "lambda_sweep"})
        return {**settings, "weight": self.weight, "n_samples": self.n, "lam": self.lam}

    @property
    def k(self) -> int:
        return len(self.params.means)

    def truth(self) -> Mixture:
        """The true mixture, repeated over seeds: (S, K), (S, K, d), (S, K, d) in float64."""
        rest = torch.tensor(self.params.weights, dtype=torch.float64)
        weights = torch.cat([torch.tensor([self.weight], dtype=torch.float64), (1 - self.weight) * rest / rest.sum()])
        means = torch.tensor(self.params.means, dtype=torch.float64)
        stds = torch.tensor(self.params.stds, dtype=torch.float64)
        s = self.seeds
        return Mixture(weights.expand(s, -1), means.expand(s, -1, -1), stds.expand(s, -1, -1))

    def draw_real(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.truth().sample(n, 1.0, generator)

    def fit(self, data: Dataset, method: str, generator: torch.Generator) -> Fitted:
        """EM for mle; else hypernetworks with lambda = 0 (hyper_mle) or self.lam (ple)."""
        if method == "mle":
            return Fitted(em(data.values, self.k))
        config = PLEConfig(lam=0.0 if method == "hyper_mle" else self.lam,
                           **self.params.ple.model_dump(exclude={"lam"}))
        d = data.values.shape[-1]
        fitted = fit_ensemble(lambda: GMMGenerator(self.k, d), data.values,
                              HyperConfig(**self.params.hyper.model_dump()), config, generator)
        w = fitted.estimate
        fitted.estimate = Mixture(w["logits"].softmax(-1).double(), w["means"].double(),
                                  w["log_stds"].exp().double()).sorted()
        return fitted

    def sample(self, model: Fitted, n: int, sampling_bias: float, generator: torch.Generator) -> torch.Tensor:
        return model.estimate.sample(n, sampling_bias, generator)

    def evaluate(self, model: Fitted, data: Dataset) -> dict[str, torch.Tensor]:
        kl, kl_se = kl_monte_carlo(self.truth(), model.estimate, self.params.kl_samples,
                                   torch.Generator().manual_seed(0))
        metrics = {"kl": kl, "kl_mc_se": kl_se}
        mix = model.estimate
        for c in range(self.k):
            metrics[f"weight_{c + 1}"] = mix.weights[:, c]
            for j in range(mix.means.shape[-1]):
                suffix = f"{c + 1}" if mix.means.shape[-1] == 1 else f"{c + 1}_{j + 1}"
                metrics[f"mean_{suffix}"] = mix.means[:, c, j]
                metrics[f"std_{suffix}"] = mix.stds[:, c, j]
        if model.ensemble is not None:
            metrics["sensitivity"] = model.ensemble.sensitivity(data.values.float())
            metrics["fit_loss"] = model.curve.final_fit
            metrics["penalty"] = model.curve.final_penalty
        return metrics

"""The Gaussian-mixture study (PLE paper Fig. 3): its params section and its `tasks.loop.Study`, one per grid point.

True data: a K-component diagonal mixture whose first component has weight `weight` (the grid's
imbalance) and the others share 1 - weight. Methods: `mle` (EM), `hyper_mle` (hypernetwork,
lambda = 0) and `ple` (hypernetwork with the penalty). Metrics per seed: KL(p_true || q_est) by
Monte Carlo and its Monte Carlo standard error, the estimated weights, means and standard
deviations (components ordered by their first mean coordinate), the smallest estimated weight
min_k pi_k (whichever component holds it) and its ratio to the smallest true weight (1: the rarest
mode keeps its mass, 0: a mode is gone), and for the hypernetwork methods
the final fit and penalty terms and the estimator response (`tasks.response`) to the mean of the
minority component and to the mixture mean: probes drawn from the true mixture with the minority
component's means moved by -0.5, 0 and +0.5. The reweighted training of H draws component shares over EM's hard assignment
of the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator

from models.gmm import GMMGenerator, Mixture, bounded, em, kl_monte_carlo
from models.ple import Fitted
from tasks.curation import Scores, density_quantile
from tasks.loop import Dataset, GridPoint
from tasks.methods import HYPERNETWORK_METHODS, fit_method
from tasks.params import HyperStudyParams, PLEParams, Strict
from tasks.response import Probes, Responsive, probe_generator
from tasks.studies.base import StudyBase

PROBE_SHIFTS = (-0.5, 0.0, 0.5)


class GMMGrid(Strict):
    weight: list[float] = Field(min_length=1, description="weight of the first (majority) component")
    n_samples: list[int] = Field(min_length=1, description="points per generation")

    @field_validator("weight")
    @classmethod
    def _weights_in_unit_interval(cls, values: list[float]) -> list[float]:
        if not all(0.0 < v < 1.0 for v in values):
            raise ValueError("every weight must lie strictly between 0 and 1")
        return values

    @field_validator("n_samples")
    @classmethod
    def _enough_points(cls, values: list[int]) -> list[int]:
        if not all(v >= 4 for v in values):
            raise ValueError("every sample size must be at least 4")
        return values


class LambdaSweep(Strict):
    """PLE at several penalty weights and forms, at one point of the grid, beside MLE and hyper-MLE (lambda = 0)."""

    lams: list[float] = Field(min_length=1, description="penalty weights, each > 0")
    forms: list[Literal["paper", "self_fit", "stop_gradient"]] = Field(
        default=["paper", "self_fit", "stop_gradient"], min_length=1, description="penalty forms, each at every lambda")
    weight: float = Field(gt=0.0, lt=1.0)
    n_samples: int = Field(ge=4)

    @field_validator("lams")
    @classmethod
    def _positive(cls, values: list[float]) -> list[float]:
        if not all(v > 0 for v in values):
            raise ValueError("every lambda must be > 0 (lambda = 0 is hyper_mle, which the sweep runs anyway)")
        return values


class GMMParams(HyperStudyParams):
    """The `gmm:` section: a grid of imbalance x sample size, and the lambda ablation `lambda_sweep`."""

    means: list[list[float]] = Field(default=[[0.0], [2.0]], min_length=2,
                                     description="K component means, each of dimension d")
    stds: list[list[float]] = Field(default=[[1.0], [1.0]], min_length=2,
                                    description="K component standard deviations (K x d)")
    weights: list[float] = Field(default=[1.0], min_length=1, description="relative weights of components 2..K "
                                 "(component 1 takes grid.weight, the rest share 1 - weight in these ratios)")
    grid: GMMGrid
    kl_samples: int = Field(default=20000, ge=100, description="Monte Carlo draws for KL(p_true || q)")
    lambda_sweep: LambdaSweep

    @model_validator(mode="after")
    def _consistent_shapes(self) -> GMMParams:
        k, d = len(self.means), len(self.means[0])
        if any(len(m) != d for m in self.means) or len(self.stds) != k or any(len(s) != d for s in self.stds):
            raise ValueError(f"means and stds must both be {k} x {d} (components x dimensions)")
        if any(v <= 0 for row in self.stds for v in row):
            raise ValueError("every standard deviation must be positive")
        if len(self.weights) != k - 1 or any(v <= 0 for v in self.weights):
            raise ValueError(f"weights needs {k - 1} positive entries, one per component after the first")
        return self


@dataclass(frozen=True)
class GMMStudy(StudyBase, Responsive):
    """One grid point: majority weight, sample size and the penalty weight lam of method ple.

    `point` names the point in outputs; `methods`, when set, restricts the methods run there.
    """

    params: GMMParams
    weight: float
    n: int
    lam: float
    point: GridPoint
    methods: tuple[str, ...] | None = None
    experiment: str = "gmm"
    form: str | None = None  # the penalty form of ple; None: the section's ple.form

    @property
    def n_samples(self) -> int:
        return self.n

    @property
    def event_size(self) -> int:
        return len(self.params.means[0])

    @property
    def config(self) -> dict:
        settings = self.params.model_dump(exclude={"methods", "grid", "lambda_sweep"})
        settings["ple"] = self.ple.model_dump()
        return {**settings, "weight": self.weight, "n_samples": self.n, "lam": self.lam}

    @property
    def ple(self) -> PLEParams:
        return self.params.ple if self.form is None else self.params.ple.model_copy(update={"form": self.form})

    @property
    def k(self) -> int:
        return len(self.params.means)

    @property
    def true_weights(self) -> torch.Tensor:
        rest = torch.tensor(self.params.weights, dtype=torch.float64)
        return torch.cat([torch.tensor([self.weight], dtype=torch.float64), (1 - self.weight) * rest / rest.sum()])

    def truth(self, shift: float = 0.0) -> Mixture:
        """The true mixture, repeated over seeds: (S, K), (S, K, d), (S, K, d) in float64; `shift` moves
        the minority component's means."""
        means = torch.tensor(self.params.means, dtype=torch.float64)
        means[self.minority] += shift
        stds = torch.tensor(self.params.stds, dtype=torch.float64)
        s = self.seeds
        return Mixture(self.true_weights.expand(s, -1), means.expand(s, -1, -1), stds.expand(s, -1, -1))

    @property
    def minority(self) -> int:
        """The component with the smallest true weight (the first of them)."""
        return int(self.true_weights.argmin())

    def probes(self) -> Probes:
        """Datasets of n points from the true mixture with the minority means moved by PROBE_SHIFTS; the
        same for every point of the same weight and n (gmm_lambda's forms and lambdas share them). Values:
        the minority's first mean coordinate and the mixture mean sum_k pi_k mu_k1 of each."""
        truths = [self.truth(d) for d in PROBE_SHIFTS]
        values = [self.statistics(t) for t in truths]
        return Probes({name: tuple(float(v[name][0]) for v in values) for name in values[0]},
                      tuple(t.sample(self.n, 1.0, probe_generator("gmm", self.weight, self.n, k)).float()
                            for k, t in enumerate(truths)))

    def statistics(self, estimate: Mixture) -> dict[str, torch.Tensor]:
        """minority_mean: the first mean coordinate of the component in the minority's place (components
        ordered by first mean); mixture_mean: sum_k pi_k mu_k1."""
        rank = int(torch.tensor(self.params.means)[:, 0].argsort().argsort()[self.minority])
        mix = estimate.sorted()
        return {"minority_mean": mix.means[:, rank, 0], "mixture_mean": (mix.weights * mix.means[..., 0]).sum(1)}

    def readout(self, weights: dict[str, torch.Tensor]) -> Mixture:
        return bounded(weights["logits"].double(), weights["means"].double(), weights["log_stds"].double()).sorted()

    def draw_real(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.truth().sample(n, 1.0, generator)

    def fit(self, data: Dataset, method: str, generator: torch.Generator) -> Fitted:
        """EM for mle; else hypernetworks with lambda = 0 (hyper_mle) or self.lam (ple)."""
        d, x = data.values.shape[-1], data.values
        groups = em(x, self.k).assign(x) if method in HYPERNETWORK_METHODS else None
        fitted = fit_method(method, x, lambda: GMMGenerator(self.k, d), self.params.hyper, self.ple,
                            generator, lam=self.lam, closed_form=lambda v: em(v, self.k), groups=groups)
        if fitted.ensemble is not None:
            fitted.estimate = self.readout(fitted.estimate)
        return fitted

    def sample(self, model: Fitted, n: int, sampling_bias: float, generator: torch.Generator) -> torch.Tensor:
        return model.estimate.sample(n, sampling_bias, generator)

    @property
    def verifier_groups(self) -> tuple[str, ...]:
        """The true components, numbered from 1 as in the metrics weight_1, weight_2, ..."""
        return tuple(str(c + 1) for c in range(self.k))

    def verify(self, values: torch.Tensor) -> Scores:
        """score: the density quantile F(p(x)) under the true mixture p (`tasks.curation.density_quantile`);
        group: the true component k of largest posterior pi_k N(x; mu_k, sigma_k^2) / p(x)."""
        truth = self.truth()
        one = Mixture(truth.weights[:1], truth.means[:1], truth.stds[:1])  # the same for every seed
        x = values.double()
        return Scores(density_quantile(one.log_prob, lambda m, g: one.sample(m, 1.0, g), x), one.assign(x),
                      self.verifier_groups)

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
        metrics["min_weight"] = mix.weights.min(dim=1).values
        metrics["min_weight_ratio"] = metrics["min_weight"] / self.true_weights.min()
        metrics.update(self.response_metrics(model))
        if model.ensemble is not None:
            metrics["fit_loss"] = model.curve.final_fit
            metrics["penalty"] = model.curve.final_penalty
        return metrics

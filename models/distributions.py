"""One-parameter-family generators for the distribution grid (PLE paper Fig. 4).

Each family is a `Generative` (so a hypernetwork can emit its raw parameters and PLE can train
it) plus batched closed forms: the MLE, a read-out of the reported parameters from raw weights,
and sampling with bias lambda (the spread scaled by sqrt(lambda) around the centre). All tensors
carry the seed axis first; data are (S, n, 1).

| family      | reported     | MLE                                   | true (generation 0) |
|-------------|--------------|---------------------------------------|---------------------|
| normal      | mu, sigma    | mean, sqrt(SS / n)                    | N(0, 1)             |
| uniform     | a, b         | min, max                              | U[0, 1]             |
| exponential | rate         | 1 / mean                              | Exp(1)              |
| laplace     | mu, b        | median, mean |x - median|            | Laplace(0, 1)       |
| mixture     | weight_1, mean_1, mean_2, std_1, std_2 | EM         | 0.8 N(0,1) + 0.2 N(2,1) |
"""

from __future__ import annotations

import math
from abc import abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from models.gmm import GMMGenerator, Mixture, bounded, em
from models.ple import Generative

Report = dict[str, torch.Tensor]  # reported parameter -> (S,)


class Family(Generative):
    """A family with raw parameters `theta` (location, log scale) unless overridden."""

    truth: dict[str, float] = {}

    def __init__(self):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(2))

    def noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.standard(torch.rand(n, 1, generator=generator).clamp(1e-7, 1 - 1e-7))

    def rsample(self, noise: torch.Tensor, sampling_bias: float = 1.0) -> torch.Tensor:
        return self.theta[0] + math.sqrt(sampling_bias) * self.theta[1].exp() * noise

    @abstractmethod
    def standard(self, u: torch.Tensor) -> torch.Tensor:
        """Standard variates from uniforms u by the inverse CDF."""

    @abstractmethod
    def readout(self, w: dict[str, torch.Tensor]) -> Report:
        """Reported parameters (S,) from the raw weights a hypernetwork emitted for S seeds."""

    @abstractmethod
    def mle(self, x: torch.Tensor) -> Report:
        """The closed-form MLE of every seed's data x (S, n, 1)."""

    @abstractmethod
    def sample(self, report: Report, n: int, sampling_bias: float, generator: torch.Generator) -> torch.Tensor:
        """(S, n, 1) draws from the reported parameters, spread scaled by sqrt(sampling_bias)."""

    @abstractmethod
    def log_prob(self, report: Report, x: torch.Tensor) -> torch.Tensor:
        """log p(x) (S, n) of points x (S, n, 1) under the reported parameters (S,); -inf off the support."""


def true_report(family: Family | TwoGaussians, seeds: int) -> Report:
    """The family's true parameters, (seeds,) each, in float64."""
    return {k: torch.full((seeds,), v, dtype=torch.float64) for k, v in family.truth.items()}


def draw_true(family: Family | TwoGaussians, seeds: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """(seeds, n, 1) draws from the family at its true parameters."""
    return family.sample(true_report(family, seeds), n, 1.0, generator)


def _column(report: Report, name: str) -> torch.Tensor:
    """The reported parameter (S,) as (S, 1, 1), to broadcast over points (S, n, 1)."""
    return report[name][:, None, None]


def _standard_draws(family: Family, report: Report, n: int, generator: torch.Generator) -> torch.Tensor:
    seeds = next(iter(report.values())).shape[0]
    u = torch.rand(seeds, n, 1, generator=generator, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    return family.standard(u)


class Normal(Family):
    truth = {"mu": 0.0, "sigma": 1.0}

    def standard(self, u):
        return math.sqrt(2) * torch.erfinv(2 * u - 1)

    def nll(self, x, noise=None):
        return (self.theta[1] + 0.5 * ((x - self.theta[0]) / self.theta[1].exp()).pow(2)).mean()

    def readout(self, w):
        return {"mu": w["theta"][:, 0], "sigma": w["theta"][:, 1].exp()}

    def mle(self, x):
        return {"mu": x.mean(dim=(1, 2)), "sigma": x.std(dim=(1, 2), correction=0)}

    def sample(self, report, n, sampling_bias, generator):
        z = _standard_draws(self, report, n, generator)
        return report["mu"][:, None, None] + math.sqrt(sampling_bias) * report["sigma"][:, None, None] * z

    def log_prob(self, report, x):
        """-(x - mu)^2 / (2 sigma^2) - log sigma - log(2 pi) / 2."""
        sigma = _column(report, "sigma")
        return (-0.5 * ((x - _column(report, "mu")) / sigma).pow(2) - sigma.log() - 0.5 * math.log(2 * math.pi))[..., 0]


class Uniform(Family):
    """theta = (a, log(b - a)); the fit loss adds a steep hinge for points outside [a, b]."""

    truth = {"a": 0.0, "b": 1.0}

    def standard(self, u):
        return u

    def nll(self, x, noise=None):
        a, width = self.theta[0], self.theta[1].exp()
        outside = F.relu(a - x) + F.relu(x - a - width)
        return self.theta[1] + 50.0 * (outside / width).mean()

    def rsample(self, noise, sampling_bias=1.0):
        a, width = self.theta[0], self.theta[1].exp()
        return a + width * (0.5 + math.sqrt(sampling_bias) * (noise - 0.5))

    def readout(self, w):
        return {"a": w["theta"][:, 0], "b": w["theta"][:, 0] + w["theta"][:, 1].exp()}

    def mle(self, x):
        return {"a": x.amin(dim=(1, 2)), "b": x.amax(dim=(1, 2))}

    def sample(self, report, n, sampling_bias, generator):
        u = _standard_draws(self, report, n, generator)
        a, b = report["a"][:, None, None], report["b"][:, None, None]
        return a + (b - a) * (0.5 + math.sqrt(sampling_bias) * (u - 0.5))

    def log_prob(self, report, x):
        """-log(b - a) on [a, b]: every point of the support is equally likely."""
        a, b = _column(report, "a"), _column(report, "b")
        return torch.where((x >= a) & (x <= b), -(b - a).log(), -math.inf)[..., 0]


class Exponential(Family):
    """theta = log rate (one entry)."""

    truth = {"rate": 1.0}

    def __init__(self):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(1))

    def standard(self, u):
        return -torch.log1p(-u)

    def nll(self, x, noise=None):
        return (-self.theta[0] + self.theta[0].exp() * x).mean()

    def rsample(self, noise, sampling_bias=1.0):
        return math.sqrt(sampling_bias) * noise / self.theta[0].exp()

    def readout(self, w):
        return {"rate": w["theta"][:, 0].exp()}

    def mle(self, x):
        return {"rate": 1.0 / x.mean(dim=(1, 2))}

    def sample(self, report, n, sampling_bias, generator):
        return math.sqrt(sampling_bias) * _standard_draws(self, report, n, generator) / report["rate"][:, None, None]

    def log_prob(self, report, x):
        """log rate - rate x for x >= 0."""
        rate = _column(report, "rate")
        return torch.where(x >= 0, rate.log() - rate * x, -math.inf)[..., 0]


class Laplace(Family):
    truth = {"mu": 0.0, "b": 1.0}

    def standard(self, u):
        return -torch.sign(u - 0.5) * torch.log1p(-2 * (u - 0.5).abs())

    def nll(self, x, noise=None):
        return (self.theta[1] + (x - self.theta[0]).abs() / self.theta[1].exp()).mean()

    def readout(self, w):
        return {"mu": w["theta"][:, 0], "b": w["theta"][:, 1].exp()}

    def mle(self, x):
        median = x.flatten(1).median(dim=1).values
        return {"mu": median, "b": (x.flatten(1) - median[:, None]).abs().mean(dim=1)}

    def sample(self, report, n, sampling_bias, generator):
        z = _standard_draws(self, report, n, generator)
        return report["mu"][:, None, None] + math.sqrt(sampling_bias) * report["b"][:, None, None] * z

    def log_prob(self, report, x):
        """-|x - mu| / b - log(2 b)."""
        b = _column(report, "b")
        return (-(x - _column(report, "mu")).abs() / b - (2 * b).log())[..., 0]


class TwoGaussians(GMMGenerator):
    """The paper's 1-D mixture 0.8 N(0, 1) + 0.2 N(2, 1) with the family interface."""

    truth = {"weight_1": 0.8, "mean_1": 0.0, "mean_2": 2.0, "std_1": 1.0, "std_2": 1.0}

    def __init__(self):
        super().__init__(k=2, d=1)

    @staticmethod
    def _report(mix: Mixture) -> Report:
        mix = mix.sorted()
        return {"weight_1": mix.weights[:, 0], "mean_1": mix.means[:, 0, 0], "mean_2": mix.means[:, 1, 0],
                "std_1": mix.stds[:, 0, 0], "std_2": mix.stds[:, 1, 0]}

    @staticmethod
    def _mixture(report: Report) -> Mixture:
        w = report["weight_1"]
        return Mixture(torch.stack([w, 1 - w], 1), torch.stack([report["mean_1"], report["mean_2"]], 1)[..., None],
                       torch.stack([report["std_1"], report["std_2"]], 1)[..., None])

    def readout(self, w):
        return self._report(bounded(w["logits"], w["means"], w["log_stds"]))

    def mle(self, x):
        return self._report(em(x, 2))

    def sample(self, report, n, sampling_bias, generator):
        return self._mixture(report).sample(n, sampling_bias, generator)

    def log_prob(self, report, x):
        return self._mixture(report).log_prob(x)


FAMILIES: dict[str, type] = {"normal": Normal, "uniform": Uniform, "exponential": Exponential,
                             "laplace": Laplace, "mixture": TwoGaussians}

"""Gaussian mixture with K diagonal components in d dimensions: EM (MLE), a `Generative` for
hypernetwork PLE, and KL(p_true || q) by Monte Carlo.

Parameters (per seed): weights pi (K,), means mu (K, d), standard deviations sigma (K, d).
    log p(x) = logsumexp_k [ log pi_k + sum_j log N(x_j; mu_kj, sigma_kj^2) ]
Reparameterised sampling (PLE): component c = straight-through Gumbel-softmax of log pi
(a hard one-hot forward, the soft relaxation's gradient backward), x = mu_c + sqrt(lambda) sigma_c eps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.ple import Generative

LOG_2PI = math.log(2 * math.pi)
MIN_STD = 1e-3
LOGIT_BOUND, MEAN_BOUND, LOG_STD_MAX = 30.0, 1e3, 7.0


@dataclass(frozen=True)
class Mixture:
    """Batched mixture parameters: weights (S, K), means (S, K, d), stds (S, K, d)."""

    weights: torch.Tensor
    means: torch.Tensor
    stds: torch.Tensor

    def joint_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log pi_k + log N(x; mu_k, sigma_k^2) for x (S, m, d) -> (S, m, K)."""
        z = (x[:, :, None, :] - self.means[:, None]) / self.stds[:, None]  # (S, m, K, d)
        comp = -0.5 * (z.pow(2) + LOG_2PI).sum(-1) - self.stds.log().sum(-1)[:, None]  # (S, m, K)
        return comp + self.weights.clamp_min(1e-30).log()[:, None]

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) for x (S, m, d) -> (S, m)."""
        return torch.logsumexp(self.joint_log_prob(x), dim=-1)

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable component of every point: x (S, m, d) -> (S, m)."""
        return self.joint_log_prob(x).argmax(-1)

    def sample(self, n: int, sampling_bias: float, generator: torch.Generator) -> torch.Tensor:
        """(S, n, d) draws, the standard deviations scaled by sqrt(sampling_bias)."""
        seeds, k, d = self.means.shape
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)  # (S, n)
        eps = torch.randn(seeds, n, d, generator=generator, dtype=self.means.dtype)
        pick = comp[..., None].expand(-1, -1, d)
        return self.means.gather(1, pick) + math.sqrt(sampling_bias) * self.stds.gather(1, pick) * eps

    def sorted(self) -> Mixture:
        """Components ordered by their first mean coordinate, so estimates line up across seeds."""
        order = self.means[..., 0].argsort(dim=1)
        pick = order[..., None].expand_as(self.means)
        return Mixture(self.weights.gather(1, order), self.means.gather(1, pick), self.stds.gather(1, pick))


def em(x: torch.Tensor, k: int, iterations: int = 200, tol: float = 1e-8) -> Mixture:
    """Maximum-likelihood mixture by EM for every seed at once: x (S, n, d).

    Initialisation: means at the (i + 1/2)/K quantiles of the first coordinate, equal weights,
    the data's standard deviation per coordinate. Standard deviations are floored at 1e-3.
    """
    seeds, n, d = x.shape
    q = torch.tensor([(i + 0.5) / k for i in range(k)], dtype=x.dtype)
    order = x[..., 0].argsort(dim=1)
    centres = x.gather(1, order[..., None].expand(-1, -1, d))[:, (q * (n - 1)).round().long()]  # (S, K, d)
    mix = Mixture(torch.full((seeds, k), 1.0 / k, dtype=x.dtype), centres,
                  x.std(dim=1, keepdim=True).clamp_min(MIN_STD).expand(-1, k, -1).clone())
    previous = torch.full((seeds,), -math.inf, dtype=x.dtype)
    for _ in range(iterations):
        z = (x[:, :, None, :] - mix.means[:, None]) / mix.stds[:, None]
        comp = -0.5 * (z.pow(2) + LOG_2PI).sum(-1) - mix.stds.log().sum(-1)[:, None] + mix.weights.log()[:, None]
        total = torch.logsumexp(comp, dim=-1, keepdim=True)  # (S, n, 1)
        resp = (comp - total).exp()  # (S, n, K)
        mass = resp.sum(dim=1).clamp_min(1e-12)  # (S, K)
        means = torch.einsum("snk,snd->skd", resp, x) / mass[..., None]
        var = torch.einsum("snk,snkd->skd", resp, (x[:, :, None, :] - means[:, None]).pow(2)) / mass[..., None]
        mix = Mixture(mass / n, means, var.sqrt().clamp_min(MIN_STD))
        loglik = total.mean(dim=(1, 2))
        if (loglik - previous).abs().max() < tol:
            break
        previous = loglik
    return mix.sorted()


def kl_monte_carlo(true: Mixture, est: Mixture, m: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(p_true || q_est) per seed by Monte Carlo with m draws from p_true, and its standard error.

    KL = E_p[log p(x) - log q(x)]; the standard error is std(log p - log q) / sqrt(m).
    """
    x = true.sample(m, 1.0, generator)
    diff = true.log_prob(x) - est.log_prob(x)
    return diff.mean(dim=1), diff.std(dim=1) / math.sqrt(m)


def bounded(logits: torch.Tensor, means: torch.Tensor, log_stds: torch.Tensor) -> Mixture:
    """The mixture of raw parameters (..., K), (..., K, d), (..., K, d), read through bounds: logits in
    [-30, 30], means in [-1e3, 1e3], stds in [1e-3, e^7]. Identity on sensible values; a diverging
    fit stays finite (its KL and samples show the divergence) instead of turning to NaN."""
    return Mixture(F.softmax(logits.clamp(-LOGIT_BOUND, LOGIT_BOUND), -1), means.clamp(-MEAN_BOUND, MEAN_BOUND),
                   log_stds.clamp(math.log(MIN_STD), LOG_STD_MAX).exp())


class GMMGenerator(Generative):
    """A K-component diagonal mixture as an `nn.Module` whose parameters a hypernetwork emits."""

    def __init__(self, k: int, d: int, tau: float = 0.5):
        super().__init__()
        self.k, self.d, self.tau = k, d, tau
        self.logits = nn.Parameter(torch.zeros(k))
        self.means = nn.Parameter(torch.linspace(-1.0, 1.0, k)[:, None].repeat(1, d))
        self.log_stds = nn.Parameter(torch.zeros(k, d))

    def mixture(self) -> Mixture:
        return bounded(self.logits[None], self.means[None], self.log_stds[None])

    def nll(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return -self.mixture().log_prob(x[None]).mean()

    def noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, K + d): K Gumbel draws for the component, d standard normals for the point."""
        u = torch.rand(n, self.k, generator=generator).clamp(1e-10, 1 - 1e-10)
        return torch.cat([-(-u.log()).log(), torch.randn(n, self.d, generator=generator)], dim=1)

    def rsample(self, noise: torch.Tensor, sampling_bias: float = 1.0) -> torch.Tensor:
        gumbel, eps = noise[:, : self.k], noise[:, self.k:]
        mix = self.mixture()
        soft = F.softmax((mix.weights[0].log() + gumbel) / self.tau, dim=-1)  # (n, K)
        hard = F.one_hot(soft.argmax(-1), self.k).to(soft.dtype)
        pick = hard + soft - soft.detach()  # straight-through
        return pick @ mix.means[0] + math.sqrt(sampling_bias) * (pick @ mix.stds[0]) * eps

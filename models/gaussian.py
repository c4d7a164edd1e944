"""Gaussian generator fitted by MLE or by analytic PLE, vectorised over independent seeds.

Reference: Mayer et al., "Improving Fairness and Mitigating MADness in Generative Models"
(arXiv 2405.13977), section on Gaussian standard-deviation estimation and Fig. 5.

Every tensor has a leading seed axis: data (S, n), fitted parameters (S,). One call handles
all seeds, so 100 seeds are one tensor operation, not 100 Python loops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

TRUE_MOMENTS = {"normal": (0.0, 1.0), "uniform": (0.5, 1.0 / math.sqrt(12.0))}  # (mu, sigma)


@dataclass(frozen=True)
class GaussianFit:
    mu: torch.Tensor  # (S,)
    sigma: torch.Tensor  # (S,)


def c4(n: int) -> float:
    """E[s] / sigma for s = sqrt(SS / (n-1)) on n normal draws: sqrt(2/(n-1)) Gamma(n/2) / Gamma((n-1)/2)."""
    return math.sqrt(2.0 / (n - 1)) * math.exp(math.lgamma(n / 2) - math.lgamma((n - 1) / 2))


def ple_factor(n: int) -> float:
    r"""The constant c of the PLE standard deviation sigma_c = c * sqrt(SS / n).

    Derivation. Let SS = sum_i (x_i - mean)^2 over n draws from N(mu, s^2). Then SS / s^2 is
    chi-squared with n-1 degrees of freedom, so E[sqrt(SS)] = s * sqrt(2) Gamma(n/2) / Gamma((n-1)/2)
    = s * sqrt(n-1) * c4(n). PLE asks the estimate to be a fixed point in expectation of the loop:
    fit sigma_c on real data, draw Y ~ N(mu, sigma_c^2), and require E[sigma_c(Y)] = sigma_c:

        c * E[sqrt(SS_Y / n)] = c * sigma_c * sqrt((n-1)/n) * c4(n) = sigma_c
        =>  c = sqrt(n / (n-1)) / c4(n).

    So sigma_PLE = sqrt(SS / (n-1)) / c4(n), the unbiased standard deviation of a normal sample.
    For the variance the same fixed-point condition gives c^2 = n / (n-1) (Bessel's correction).
    MLE (c = 1) shrinks the expected variance by (n-1)/n every generation of the replace loop;
    with PLE the expected sigma stays put, though each run still wanders (sigma_g is a martingale).
    """
    return math.sqrt(n / (n - 1)) / c4(n)


def fit(x: torch.Tensor, method: str) -> GaussianFit:
    """Fit N(mu, sigma^2) to each row of x (S, n): mu = mean, sigma = c * sqrt(SS / n)."""
    n = x.shape[1]
    mu = x.mean(dim=1)
    sigma_mle = (x - mu[:, None]).pow(2).mean(dim=1).sqrt()
    if method == "mle":
        return GaussianFit(mu, sigma_mle)
    if method == "ple":
        return GaussianFit(mu, sigma_mle * ple_factor(n))
    raise ValueError(f"unknown Gaussian method {method!r}; use 'mle' or 'ple'")


def sample(model: GaussianFit, n: int, sampling_bias: float, generator: torch.Generator) -> torch.Tensor:
    """Draw (S, n) samples from N(mu, lambda * sigma^2), lambda = sampling_bias (MAD paper)."""
    noise = torch.randn(model.mu.shape[0], n, generator=generator, dtype=model.mu.dtype)
    return model.mu[:, None] + math.sqrt(sampling_bias) * model.sigma[:, None] * noise


def draw_true(distribution: str, seeds: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """(seeds, n) draws from the true distribution: N(0, 1) or U[0, 1], in float64."""
    if distribution == "normal":
        return torch.randn(seeds, n, generator=generator, dtype=torch.float64)
    if distribution == "uniform":
        return torch.rand(seeds, n, generator=generator, dtype=torch.float64)
    raise ValueError(f"unknown distribution {distribution!r}; use 'normal' or 'uniform'")


def expected_mle_variance(sigma2: float, n: int, generation: int, sampling_bias: float) -> float:
    """E[sigma_hat_g^2] under MLE in the replace loop: sigma2 * ((n-1)/n)^(g+1) * lambda^g.

    Generation 0 sees real data (E[SS/n] = (n-1)/n sigma2 for any distribution); each later
    generation samples with variance lambda * sigma_hat_(g-1)^2 and loses another (n-1)/n.
    """
    return sigma2 * ((n - 1) / n) ** (generation + 1) * sampling_bias**generation


def expected_mle_variance_fresh(sigma2: float, n: int, n_real: int, n_synth: int, generations: int,
                                sampling_bias: float) -> list[float]:
    """E[sigma_hat_g^2], g = 0 .. generations-1, under MLE in the fresh loop: D_g holds N = n_r + n_s points,
    n_r new real draws (variance sigma2, mean mu) and n_s samples of N(mu_(g-1), lambda v_(g-1)).

    With v_g = sigma_hat_g^2, d_g = mu_hat_g - mu and T = n_r sigma2 + n_s lambda E[v_(g-1)]:

        E[v_g]   = T (N-1) / N^2 + n_r n_s E[d_(g-1)^2] / N^2
        E[d_g^2] = T / N^2 + n_s^2 E[d_(g-1)^2] / N^2

    from E[SS] = (1 - 1/N) sum Var(z_i) + sum (E z_i - E zbar)^2, starting at E[v_0] = (n-1)/n sigma2 and
    E[d_0^2] = sigma2 / n. Only second moments enter, so it holds for any real distribution; n_r = 0 gives
    `expected_mle_variance`.
    """
    v, d2 = (n - 1) / n * sigma2, sigma2 / n
    out = [v]
    total = n_real + n_synth
    for _ in range(1, generations):
        t = n_real * sigma2 + n_synth * sampling_bias * v
        v, d2 = (t * (total - 1) + n_real * n_synth * d2) / total**2, (t + n_synth**2 * d2) / total**2
        out.append(v)
    return out

"""The analytic estimators of models.gaussian against closed forms and Monte Carlo."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from models import gaussian


@pytest.mark.parametrize("n", [2, 3, 5, 10, 100])
def test_c4_matches_the_chi_distribution(n):
    """E[s]/sigma = E[chi_(n-1)] / sqrt(n-1)."""
    assert gaussian.c4(n) == pytest.approx(stats.chi(n - 1).mean() / math.sqrt(n - 1), rel=1e-12)


@pytest.mark.parametrize("n", [3, 10, 40])
def test_ple_is_a_fixed_point_in_expectation(n):
    """E[sigma_PLE(Y)] = sigma for Y ~ N(mu, sigma^2): checked by Monte Carlo within 4 standard errors."""
    g = torch.Generator().manual_seed(n)
    sigma = 2.5
    y = 1.0 + sigma * torch.randn(200_000, n, generator=g, dtype=torch.float64)
    est = gaussian.fit(y, "ple").sigma
    se = est.std() / math.sqrt(len(est))
    assert abs(est.mean() - sigma) < 4 * se
    mle = gaussian.fit(y, "mle").sigma.pow(2)  # E[sigma_MLE^2] = (n-1)/n sigma^2
    assert abs(mle.mean() - (n - 1) / n * sigma**2) < 4 * mle.std() / math.sqrt(len(mle))


@pytest.mark.parametrize("lam", [1.0, 0.25])
def test_sampling_bias_scales_the_variance(lam):
    """Draws of N(mu, lambda sigma^2), four seeds of different mu and sigma: per seed the sample mean lies within
    4 standard errors of mu, and the sample variance s^2 in the central 99.98% of its law,
    (n - 1) s^2 / (lambda sigma^2) ~ chi^2(n - 1)."""
    mu = torch.tensor([0.0, 1.5, -2.0, 10.0], dtype=torch.float64)
    sigma = torch.tensor([2.0, 0.5, 1.0, 3.0], dtype=torch.float64)
    n = 100_000
    x = gaussian.sample(gaussian.GaussianFit(mu, sigma), n, lam, torch.Generator().manual_seed(0))
    assert x.shape == (4, n) and x.dtype == torch.float64
    variance = lam * sigma**2
    assert ((x.mean(dim=1) - mu).abs() < 4 * (variance / n).sqrt()).all(), x.mean(dim=1)
    low, high = stats.chi2(n - 1).ppf([1e-4, 1 - 1e-4]) / (n - 1)
    ratio = x.var(dim=1) / variance
    assert ((low < ratio) & (ratio < high)).all(), (ratio, low, high)


def test_true_moments_match_draws():
    for name, (mu, sigma) in gaussian.TRUE_MOMENTS.items():
        x = gaussian.draw_true(name, 2, 200_000, torch.Generator().manual_seed(1))
        assert x.mean().item() == pytest.approx(mu, abs=0.01)
        assert x.std().item() == pytest.approx(sigma, rel=0.01)


def test_unknown_method_and_distribution():
    with pytest.raises(ValueError, match="unknown Gaussian method"):
        gaussian.fit(torch.zeros(2, 3), "bayes")
    with pytest.raises(ValueError, match="unknown distribution"):
        gaussian.draw_true("cauchy", 1, 3, torch.Generator())

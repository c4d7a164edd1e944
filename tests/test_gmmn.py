"""The GMMN generator: unbiased MMD^2 against a direct computation and against theory, training."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from sklearn.datasets import load_digits

from models.gmmn import GMMN, GMMNConfig, mmd2
from models.hypernet import HyperConfig
from models.ple import PLEConfig, fit_direct, fit_ensemble, sample_weights


def _direct_mmd2(x, y, bandwidths):
    """The textbook unbiased estimator, term by term in Python loops."""
    dim = x.shape[1]

    def k(a, b):
        return sum(math.exp(-float((a - b).pow(2).sum()) / (2 * s * dim)) for s in bandwidths)

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def test_mmd2_matches_the_direct_sum():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(7, 5, generator=g, dtype=torch.float64), torch.rand(6, 5, generator=g, dtype=torch.float64)
    assert float(mmd2(x, y, (0.1, 1.0))) == pytest.approx(_direct_mmd2(x, y, (0.1, 1.0)), rel=1e-9)


def test_mmd2_is_unbiased_for_equal_distributions_and_positive_otherwise():
    """Mean over 200 independent pairs of equal-law samples: within 4 standard errors of 0."""
    g = torch.Generator().manual_seed(1)
    same = torch.stack([mmd2(torch.rand(20, 4, generator=g), torch.rand(20, 4, generator=g), (0.05, 0.2))
                        for _ in range(200)])
    assert abs(same.mean()) < 4 * same.std() / 200**0.5
    null = torch.stack([mmd2(torch.rand(100, 4, generator=g), torch.rand(100, 4, generator=g), (0.05, 0.2))
                        for _ in range(50)])
    shifted = mmd2(torch.rand(100, 4, generator=g), torch.rand(100, 4, generator=g) + 0.3, (0.05, 0.2))
    assert shifted > null.mean() + 6 * null.std()  # far outside the spread under equal laws


@pytest.mark.parametrize("shape", [(8, 8), (1, 28, 28), (3, 32, 32)])
def test_generator_makes_images_of_the_data_shape(shape):
    gmmn = GMMN(shape, GMMNConfig(latent=4, channels=8))
    images = gmmn.rsample(gmmn.noise(5, torch.Generator().manual_seed(0)))
    assert images.shape == (5, *shape) and 0 <= images.min() and images.max() <= 1


def test_sides_not_divisible_by_4_are_refused():
    with pytest.raises(ValueError, match="divisible by 4"):
        GMMN((10, 10))


def test_mle_and_ple_lower_the_mmd_to_digits():
    x = torch.tensor(load_digits().images[:100], dtype=torch.float32)[None].repeat(2, 1, 1, 1) / 16
    make = lambda: GMMN((8, 8), GMMNConfig(latent=4, channels=8))  # noqa: E731
    config = PLEConfig(lam=1.0, steps=80, lr=5e-3, batch_fraction=0.5)
    for fitted in (fit_direct(make, x, config, torch.Generator().manual_seed(0)),
                   fit_ensemble(make, x, HyperConfig(hidden=16), config, torch.Generator().manual_seed(0))):
        assert sum(fitted.curve.fit[-10:]) < 0.5 * sum(fitted.curve.fit[:10])
        assert sample_weights(make(), fitted.estimate, 16, 1.0, torch.Generator()).shape == (2, 16, 8, 8)

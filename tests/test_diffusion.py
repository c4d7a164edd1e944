"""The diffusion model: schedules against their formulas, the fit loss and DDIM/ancestral sampling
against cases whose answer is known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from models.diffusion import PRESETS, Diffusion, DiffusionConfig, alpha_bars
from models.hypernet import HyperConfig
from models.ple import PLEConfig, fit_ensemble


def test_cosine_schedule_is_nichol_and_dhariwals_formula():
    """beta_t = min(1 - f(t) / f(t - 1), 0.999) and alpha_bar_t = prod (1 - beta_s), which is f(t) / f(0)
    before the first clipped beta (here the last one)."""
    T = 100
    a = alpha_bars(T, "cosine").numpy()
    f = np.cos((np.arange(T + 1) / T + 0.008) / 1.008 * np.pi / 2) ** 2
    betas = np.minimum(1 - f[1:] / f[:-1], 0.999)
    assert a[0] == 1 and np.allclose(a[1:], np.cumprod(1 - betas), rtol=1e-10)
    assert betas[-1] == 0.999 and betas[-2] < 0.999
    assert np.allclose(a[1:-1], f[1:-1] / f[0], rtol=1e-10)


def test_linear_schedule_spans_its_betas():
    a = alpha_bars(1000, "linear").numpy()
    betas = 1 - a[1:] / a[:-1]
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    assert 1 - alpha_bars(100, "linear")[1] / 1 == pytest.approx(1e-3)  # scaled by 1000 / T


class PointMass(nn.Module):
    """The exact noise predictor when every image equals c (in [-1, 1]): eps = (x_t - sqrt(a_t) c) / sqrt(1 - a_t)."""

    def __init__(self, c: torch.Tensor, config: DiffusionConfig):
        super().__init__()
        self.c, self.a = c, alpha_bars(config.timesteps, config.schedule).float()

    def forward(self, x, t):
        a = self.a[t][:, None, None, None]
        return (x - a.sqrt() * self.c) / (1 - a).sqrt()


class GaussianData(nn.Module):
    """The exact noise predictor when x0 ~ N(0, s^2) per pixel: E[eps | x_t] = sqrt(1 - a) x_t / (a s^2 + 1 - a)."""

    def __init__(self, s: float, config: DiffusionConfig):
        super().__init__()
        self.s, self.a = s, alpha_bars(config.timesteps, config.schedule).float()

    def forward(self, x, t):
        a = self.a[t][:, None, None, None]
        return (1 - a).sqrt() * x / (a * self.s ** 2 + 1 - a)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("steps,eta", [(1, 0.0), (5, 0.0), (50, 0.0), (50, 1.0)])
def test_sampler_returns_the_point_mass_from_any_start(schedule, steps, eta):
    config = DiffusionConfig(timesteps=50, schedule=schedule)
    model = Diffusion((4, 4), config)
    c = torch.linspace(-0.9, 0.9, 16).reshape(1, 1, 4, 4)
    model.denoiser = PointMass(c, config)
    g = torch.Generator().manual_seed(0)
    x0 = model.ddim(torch.randn(6, 1, 4, 4, generator=g), steps, eta, torch.randn(steps, 6, 1, 4, 4, generator=g))
    assert torch.allclose(x0, c.expand_as(x0), atol=1e-4)


@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_sampler_reproduces_gaussian_data(eta):
    """With the exact predictor of x0 ~ N(0, s^2), DDPM's ancestral sampler and DDIM with all T steps
    both return N(0, s^2): sample mean within 4 SE of 0, variance within 4 SE of s^2 (SE of a variance:
    s^2 sqrt(2 / (N - 1))). (With 10 of 100 steps DDIM's variance is 0.057 instead of 0.09: the
    discretisation error of few steps, the price of a cheap differentiable sampler.)"""
    steps = 100
    s, n = 0.3, 4000
    config = DiffusionConfig(timesteps=100)
    model = Diffusion((1, 1, 1), config)
    model.denoiser = GaussianData(s, config)
    g = torch.Generator().manual_seed(1)
    x0 = model.ddim(torch.randn(n, 1, 1, 1, generator=g), steps, eta, torch.randn(steps, n, 1, 1, 1, generator=g))
    x0 = x0.flatten().double()
    assert abs(float(x0.mean())) < 4 * s / math.sqrt(n)
    assert abs(float(x0.var()) - s ** 2) < 4 * s ** 2 * math.sqrt(2 / (n - 1))


def test_fit_loss_of_a_zero_predictor_is_the_noise_energy():
    """eps_theta = 0 gives E ||eps||^2 = P (pixels) per image: within 4 SE of 64 on 8x8 images."""
    model = Diffusion((8, 8))
    last = model.denoiser.body[-1]
    nn.init.zeros_(last.weight), nn.init.zeros_(last.bias)
    n = 2000
    noise = model.noise(n, torch.Generator().manual_seed(2))
    loss = float(model.nll(torch.rand(n, 8, 8), noise))
    assert abs(loss - 64) < 4 * math.sqrt(2 * 64 / n)  # ||eps||^2 ~ chi^2_64: variance 128


def test_sampling_bias_scales_the_starting_noise():
    """rsample(noise, lambda) starts DDIM from sqrt(lambda) x_T: a point mass is reached from any start,
    and with the Gaussian predictor the deterministic map is linear, so lambda scales the spread."""
    config = DiffusionConfig(timesteps=100, sampling_steps=100)
    model = Diffusion((1, 1, 1), config)
    model.denoiser = GaussianData(0.3, config)
    noise = model.noise(4000, torch.Generator().manual_seed(3))
    full, quarter = model.rsample(noise, 1.0), model.rsample(noise, 0.25)
    # pixels back in [0, 1]: (x0 + 1) / 2, so the spread is s / 2 and halves again at lambda = 1/4
    assert float(((full - 0.5).std() / (quarter - 0.5).std())) == pytest.approx(2.0, rel=0.02)


@pytest.mark.parametrize("preset,shape", [("small", (8, 8)), ("mnist", (28, 28)), ("cifar10", (3, 32, 32))])
def test_every_preset_denoises_and_samples_at_the_data_shape(preset, shape):
    config = DiffusionConfig(**{**PRESETS[preset].__dict__, "hidden": 16 if preset != "small" else 32,
                                "timesteps": 20, "sampling_steps": 2})
    model = Diffusion(shape, config)
    noise = model.noise(3, torch.Generator().manual_seed(0))
    assert torch.isfinite(model.nll(torch.rand(3, *shape), noise))
    assert model.rsample(noise).shape == (3, *shape)
    assert model.sample(3, torch.Generator().manual_seed(0), steps=4).shape == (3, *shape)


def test_penalty_reaches_the_hypernetwork_through_ddim():
    """Y = DDIM(H(X), x_T) is differentiable in H: with lambda > 0 the penalty term moves every H parameter."""
    x = torch.rand(2, 10, 8, 8)
    fitted = fit_ensemble(lambda: Diffusion((8, 8), DiffusionConfig(hidden=32, timesteps=20, sampling_steps=3)), x,
                          HyperConfig(hidden=8), PLEConfig(steps=1, lam=1.0), torch.Generator().manual_seed(0))
    ensemble = fitted.ensemble
    noise = torch.stack([ensemble.target.noise(10, torch.Generator().manual_seed(s)) for s in range(2)])
    _, penalty = ensemble.terms(x, noise)
    penalty.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ensemble.params.values())

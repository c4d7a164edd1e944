"""The VAE generator and the engine's direct (mle) training, against torch.distributions."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits
from torch.distributions import Bernoulli, Normal, kl_divergence

from models.hypernet import HyperConfig
from models.ple import PLEConfig, fit_direct, fit_ensemble, sample_weights
from models.vae import VAE, VAEConfig


def _digits(n: int = 120, seeds: int = 2) -> torch.Tensor:
    x = torch.tensor(load_digits().images[:n], dtype=torch.float32) / 16
    return torch.stack([x[torch.randperm(n, generator=torch.Generator().manual_seed(s))] for s in range(seeds)])


def test_negative_elbo_matches_torch_distributions():
    torch.manual_seed(0)
    vae = VAE((8, 8), VAEConfig(hidden=16, latent=3))
    x = _digits(10, 1)[0]
    noise = vae.noise(10, torch.Generator().manual_seed(1))
    mu, log_var = vae.encoder(x.reshape(10, -1)).chunk(2, dim=-1)
    q = Normal(mu, (0.5 * log_var).exp())
    z = mu + q.scale * noise[:, :3]
    recon = -Bernoulli(logits=vae.decoder(z), validate_args=False).log_prob(x.reshape(10, -1)).sum(-1)
    kl = kl_divergence(q, Normal(torch.zeros(3), torch.ones(3))).sum(-1)
    torch.testing.assert_close(vae.nll(x, noise), (recon + kl).mean())


def test_samples_are_images_and_the_latent_is_scaled_by_the_sampling_bias():
    torch.manual_seed(0)
    vae = VAE((8, 8), VAEConfig(hidden=16, latent=3))
    noise = vae.noise(500, torch.Generator().manual_seed(2))
    full, narrow = vae.rsample(noise, 1.0), vae.rsample(noise, 0.01)
    assert full.shape == (500, 8, 8) and 0 <= full.min() and full.max() <= 1
    assert narrow.var(dim=0).sum() < full.var(dim=0).sum()  # z ~ N(0, 0.01 I) varies less
    torch.testing.assert_close(vae.rsample(noise * 0.1, 1.0), narrow)


def test_direct_training_lowers_the_elbo_and_is_reproducible():
    x = _digits()
    config = PLEConfig(steps=150, lr=3e-3, batch_fraction=0.5)
    make = lambda: VAE((8, 8), VAEConfig(hidden=32, latent=4))  # noqa: E731
    fitted = fit_direct(make, x, config, torch.Generator().manual_seed(0))
    again = fit_direct(make, x, config, torch.Generator().manual_seed(0))
    assert fitted.curve.fit[-1] < 0.7 * fitted.curve.fit[0]
    assert fitted.ensemble is None and fitted.estimate["encoder.0.weight"].shape == (2, 32, 64)
    for name, value in fitted.estimate.items():
        torch.testing.assert_close(value, again.estimate[name], rtol=0, atol=0, msg=name)
    a = sample_weights(make(), fitted.estimate, 50, 1.0, torch.Generator().manual_seed(3))
    b = sample_weights(make(), fitted.estimate, 50, 1.0, torch.Generator().manual_seed(3))
    assert a.shape == (2, 50, 8, 8) and torch.equal(a, b)
    assert not torch.equal(a[0], a[1])  # the seeds are separate models


def test_samples_drawn_in_batches_equal_one_batch():
    x = _digits()
    make = lambda: VAE((8, 8), VAEConfig(hidden=16, latent=3))  # noqa: E731
    fitted = fit_direct(make, x, PLEConfig(steps=5), torch.Generator().manual_seed(0))
    one = sample_weights(make(), fitted.estimate, 30, 1.0, torch.Generator().manual_seed(4), batch_size=30)
    many = sample_weights(make(), fitted.estimate, 30, 1.0, torch.Generator().manual_seed(4), batch_size=7)
    assert one.shape == many.shape == (2, 30, 8, 8)
    assert not torch.equal(one, many)  # noise is drawn per batch and seed; both are valid draws


@pytest.mark.parametrize("batch_norm", [False, True])
def test_hypernetwork_trains_the_vae_with_the_penalty(batch_norm):
    x = _digits(60)
    make = lambda: VAE((8, 8), VAEConfig(hidden=16, latent=3, batch_norm=batch_norm))  # noqa: E731
    fitted = fit_ensemble(make, x, HyperConfig(hidden=16), PLEConfig(lam=1.0, steps=60, lr=3e-3),
                          torch.Generator().manual_seed(0))
    assert fitted.curve.fit[-1] < fitted.curve.fit[0]
    assert fitted.curve.final_penalty.shape == (2,) and (fitted.curve.final_penalty > 0).all()
    assert sample_weights(make(), fitted.estimate, 20, 1.0, torch.Generator()).isfinite().all()

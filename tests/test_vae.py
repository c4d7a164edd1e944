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


def _linear_vae(latent: int = 3) -> VAE:
    """A VAE without hidden layers: logit(sample) = W z + b, so each sample's latent z can be read back."""
    torch.manual_seed(0)
    return VAE((8, 8), VAEConfig(latent=latent, depth=0))


def _latents(vae: VAE, images: torch.Tensor) -> torch.Tensor:
    """The z (..., latent) with sigmoid(W z + b) = images (..., 8, 8), by least squares in float64."""
    (decoder,) = vae.decoder
    y = torch.logit(images.double().flatten(-2)) - decoder.bias.detach().double()
    return y @ torch.linalg.pinv(decoder.weight.detach().double()).T


def _assert_standard_normal_times(z: torch.Tensor, lam: float) -> None:
    """Each column of z (n, k) has mean 0 and variance lam: within 4 standard errors, from N(0, lam) for the
    mean and from (n - 1) s^2 / lam ~ chi^2(n - 1) (so sd(s^2) = lam sqrt(2 / (n - 1))) for the variance."""
    n = z.shape[0]
    assert (z.mean(0).abs() < 4 * (lam / n) ** 0.5).all(), z.mean(0)
    assert ((z.var(0) - lam).abs() < 4 * lam * (2 / (n - 1)) ** 0.5).all(), z.var(0)


@pytest.mark.parametrize("lam", [1.0, 0.25])
def test_samples_are_images_and_the_latent_is_scaled_by_the_sampling_bias(lam):
    """rsample(noise, lambda) decodes z ~ N(0, lambda I): the latents read back from the images through a linear
    decoder have variance lambda, and decoding them gives the images again."""
    vae = _linear_vae()
    images = vae.rsample(vae.noise(20_000, torch.Generator().manual_seed(2)), lam).detach()
    assert images.shape == (20_000, 8, 8) and 0 <= images.min() and images.max() <= 1
    z = _latents(vae, images)
    torch.testing.assert_close(torch.sigmoid(vae.decoder(z.float())), images.flatten(1), rtol=0, atol=1e-5)
    _assert_standard_normal_times(z, lam)


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


def test_samples_drawn_in_batches_are_fresh_draws_of_the_same_law():
    """sample_weights in batches of 7 (n not a multiple) and in one batch: the same shapes; the same batch size and
    generator give identical samples; the latents read back from two seeds of identical weights are all different
    (no batch or seed reuses noise) and are N(0, lambda I) in both cases, within 4 standard errors."""
    vae, n, lam = _linear_vae(), 1000, 0.5
    weights = {name: p.detach().expand(2, *p.shape) for name, p in vae.named_parameters()}

    def draw(size: int) -> torch.Tensor:
        return sample_weights(vae, weights, n, lam, torch.Generator().manual_seed(4), batch_size=size)

    one, many = draw(n), draw(7)
    assert one.shape == many.shape == (2, n, 8, 8)
    assert torch.equal(many, draw(7))
    for samples in (one, many):
        z = _latents(vae, samples).reshape(2 * n, 3)
        assert torch.pdist(z).min() > 1e-3, "two samples share their noise"
        _assert_standard_normal_times(z, lam)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_hypernetwork_trains_the_vae_with_the_penalty(batch_norm):
    x = _digits(60)
    make = lambda: VAE((8, 8), VAEConfig(hidden=16, latent=3, batch_norm=batch_norm))  # noqa: E731
    fitted = fit_ensemble(make, x, HyperConfig(hidden=16), PLEConfig(lam=1.0, steps=60, lr=3e-3),
                          torch.Generator().manual_seed(0))
    assert fitted.curve.fit[-1] < fitted.curve.fit[0]
    assert fitted.curve.final_penalty.shape == (2,) and (fitted.curve.final_penalty > 0).all()
    assert sample_weights(make(), fitted.estimate, 20, 1.0, torch.Generator()).isfinite().all()

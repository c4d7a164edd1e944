"""A multilayer-perceptron variational autoencoder (Kingma & Welling 2014) as a `Generative`.

Prior p(z) = N(0, I); encoder q(z | x) = N(mu(x), diag sigma(x)^2); decoder p(x | z) = prod_j
Bernoulli(x_j; sigmoid(f_j(z))) on pixels scaled to [0, 1]. The fit loss is the negative ELBO per
image, with one reparameterised draw z = mu + sigma * eps:

    nll(x) = sum_j BCE(sigmoid(f_j(z)), x_j) + KL(q(z | x) || p(z)),
    KL = 0.5 * sum_k (mu_k^2 + sigma_k^2 - 1 - log sigma_k^2).

A sample with sampling bias lambda is the decoder's mean image at z = sqrt(lambda) * eps
(docs/loop.md: neural samplers scale the latent). Batch norm, when on, normalises with the
statistics of the current batch only (no running averages), so the same module runs under
`torch.func.vmap` for every method; samples are therefore drawn in large batches.

Presets: `paper` is the PLE paper's MNIST model (three hidden layers of 1024 units each way,
latent 32, batch norm, LeakyReLU 0.2); `small` trains on 8x8 digits on a CPU in seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.ple import Generative


@dataclass(frozen=True)
class VAEConfig:
    hidden: int = 128  # units of every hidden layer
    depth: int = 2  # hidden layers of the encoder and of the decoder
    latent: int = 8  # dimension of z
    batch_norm: bool = False
    negative_slope: float = 0.2  # of the LeakyReLU activations


PRESETS = {
    "small": VAEConfig(),
    "paper": VAEConfig(hidden=1024, depth=3, latent=32, batch_norm=True),
}


def perceptron(width_in: int, hidden: int, depth: int, width_out: int, config: VAEConfig) -> nn.Sequential:
    """width_in -> depth x [Linear(hidden), (BatchNorm), LeakyReLU] -> Linear(width_out)."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers.append(nn.Linear(width_in if i == 0 else hidden, hidden))
        if config.batch_norm:
            layers.append(nn.BatchNorm1d(hidden, track_running_stats=False))
        layers.append(nn.LeakyReLU(config.negative_slope))
    return nn.Sequential(*layers, nn.Linear(hidden if depth else width_in, width_out))


class VAE(Generative):
    """VAE for images of shape `event_shape`, (H, W) or (C, H, W), with pixels in [0, 1]."""

    def __init__(self, event_shape: tuple[int, ...], config: VAEConfig = VAEConfig(), conditions: int = 0):
        super().__init__()
        self.event_shape, self.config = tuple(event_shape), config
        pixels = math.prod(event_shape)
        self.encoder = perceptron(pixels + conditions, config.hidden, config.depth, 2 * config.latent, config)
        self.decoder = perceptron(config.latent + conditions, config.hidden, config.depth, pixels, config)

    def nll(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Negative ELBO per image in nats, averaged over the images."""
        return self.row_nll(x, noise).mean()

    def row_nll(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Negative ELBO of every image (n,); `noise[:, :latent]` is the posterior draw's eps."""
        return self.elbo_terms(x.reshape(x.shape[0], -1), None, noise)

    def elbo_terms(self, flat: torch.Tensor, condition: torch.Tensor | None, noise: torch.Tensor | None) -> torch.Tensor:
        """-ELBO (n,) of flat images (n, pixels); `condition` (n, k) joins the encoder's and decoder's inputs."""
        joined = flat if condition is None else torch.cat([flat, condition], dim=-1)
        mu, log_var = self.encoder(joined).chunk(2, dim=-1)  # (n, latent) each
        eps = noise[:, : self.config.latent] if noise is not None else torch.zeros_like(mu)
        z = mu + (0.5 * log_var).exp() * eps
        logits = self.decoder(z if condition is None else torch.cat([z, condition], dim=-1))
        recon = F.binary_cross_entropy_with_logits(logits, flat, reduction="none").sum(-1)
        kl = 0.5 * (mu.pow(2) + log_var.exp() - 1 - log_var).sum(-1)
        return recon + kl

    def noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, 2 latent): eps of the posterior draw in `nll`, then eps of the sample in `rsample`."""
        return torch.randn(n, 2 * self.config.latent, generator=generator)

    def rsample(self, noise: torch.Tensor, sampling_bias: float = 1.0) -> torch.Tensor:
        z = math.sqrt(sampling_bias) * noise[:, self.config.latent:]
        return torch.sigmoid(self.decoder(z)).reshape(-1, *self.event_shape)

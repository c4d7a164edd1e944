"""A class-conditional VAE and a per-point loss weighting, both as `Generative`s for the PLE engine.

`ConditionalVAE` models p(x | c) for a label c in {0, ..., K-1} (Sohn et al. 2015): c enters the
encoder and the decoder as a one-hot vector, and the fit loss is the negative ELBO of x given c.
Its events are flat rows (pixels..., c): the data, the hypernetwork's input and the samples all carry
their labels. A sample draws c with the fixed `label_shares` (the real data's), then x | c, so the
label marginal is kept by construction and only p(x | c) is learned and can drift.

`RowWeighted` turns any generator with a per-point loss `row_nll` into one whose events carry a
weight as their last entry: loss = sum_i w_i l_i / sum_i w_i (minority up-weighting).
"""

from __future__ import annotations

import math

import torch

from models.ple import Generative
from models.vae import VAE, VAEConfig


class ConditionalVAE(VAE):
    """p(x | c) for images of `image_shape` with pixels in [0, 1]; events (prod(image_shape) + 1,)."""

    def __init__(self, image_shape: tuple[int, ...], config: VAEConfig, label_shares: tuple[float, ...]):
        super().__init__(image_shape, config, conditions=len(label_shares))
        self.image_shape = tuple(image_shape)
        self.event_shape = (math.prod(image_shape) + 1,)
        self.thresholds = tuple(torch.tensor(label_shares, dtype=torch.float64).cumsum(0)[:-1].tolist())

    def one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        """(n,) labels held as floats -> (n, K) one-hot rows (a comparison, so it runs under vmap)."""
        classes = torch.arange(len(self.thresholds) + 1, device=labels.device, dtype=labels.dtype)
        return (labels[:, None] == classes).to(labels.dtype)

    def summary_features(self, x: torch.Tensor) -> torch.Tensor:
        """[one_hot(c) (x) pixels, one_hot(c)] per row: (n, K P + K). Mean pooling over rows then gives
        every label's share and its pixel sums, so what moves with p(x | c) (e.g. the share of an
        attribute within each label) is a first moment a hypernetwork reads, not only p(x)."""
        c = self.one_hot(x[:, -1])
        return torch.cat([(c[:, :, None] * x[:, None, :-1]).flatten(1), c], dim=1)

    def row_nll(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """-ELBO of every row's pixels x[:, :-1] given its label x[:, -1]: (n,)."""
        return self.elbo_terms(x[:, :-1], self.one_hot(x[:, -1]), noise)

    def noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, 2 latent + 1): the VAE's two Gaussian draws, then a uniform draw that picks the label."""
        return torch.cat([super().noise(n, generator), torch.rand(n, 1, generator=generator)], dim=1)

    def rsample(self, noise: torch.Tensor, sampling_bias: float = 1.0) -> torch.Tensor:
        """Rows (pixels..., c): c = number of cumulative label shares below the uniform draw."""
        thresholds = torch.tensor(self.thresholds, device=noise.device, dtype=noise.dtype)
        labels = (noise[:, -1:] > thresholds).sum(1).to(noise.dtype)
        latent = self.config.latent
        z = math.sqrt(sampling_bias) * noise[:, latent: 2 * latent]
        pixels = torch.sigmoid(self.decoder(torch.cat([z, self.one_hot(labels)], dim=-1)))
        return torch.cat([pixels, labels[:, None]], dim=-1)


class RowWeighted(Generative):
    """`base` fitted with a weight per point: events (base event..., w); samples are the base's."""

    def __init__(self, base: VAE):
        super().__init__()
        self.base = base

    def nll(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        weights = x[:, -1]
        return (self.base.row_nll(x[:, :-1], noise) * weights).sum() / weights.sum()

    def noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.base.noise(n, generator)

    def rsample(self, noise: torch.Tensor, sampling_bias: float = 1.0) -> torch.Tensor:
        return self.base.rsample(noise, sampling_bias)

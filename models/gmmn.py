"""A DCGAN-style image generator trained by maximum mean discrepancy: a generative moment
matching network (GMMN; Li, Swersky & Zemel 2015; Dziugaite et al. 2015) as a `Generative`.

A GAN whose discriminator is a fixed kernel: the generator G maps z ~ N(0, I) to an image, and
its fit loss is the unbiased estimate of MMD^2 between the data x (n images) and n samples
y = G(z), with a sum of Gaussian kernels on the flattened pixels (D of them):

    k(a, b) = sum_s exp(-||a - b||^2 / (2 s D)),   s in `bandwidths`,
    MMD^2 = mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j} k(x_i, y_j).

Being one objective of the generator's weights alone, it trains by `mle`, `hyper_mle` and `ple`
through the same engine as every other generator. Samples with sampling bias lambda are
G(sqrt(lambda) z). The generator is DCGAN's (`models.networks.DCGANGenerator`).

Presets: `small` for 8x8 digits on a CPU; `large` for CIFAR-10 on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.networks import DCGANGenerator, LatentGenerative, channels_first


@dataclass(frozen=True)
class GMMNConfig:
    latent: int = 8  # dimension of z
    channels: int = 32  # c: width of the last hidden feature map (the first has 2 c)
    bandwidths: tuple[float, ...] = (0.005, 0.02, 0.08, 0.32)  # kernel widths s, per pixel


PRESETS = {
    "small": GMMNConfig(),
    "large": GMMNConfig(latent=128, channels=256),
}


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidths: tuple[float, ...]) -> torch.Tensor:
    """Unbiased MMD^2 between x (n, D) and y (m, D) for the kernel sum of the module docstring."""
    n, m, dim = x.shape[0], y.shape[0], x.shape[1]
    both = torch.cat([x, y])
    sq = torch.cdist(both, both).pow(2)
    k = sum(torch.exp(-sq / (2 * s * dim)) for s in bandwidths)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    return ((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
            + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)) - 2 * kxy.mean())


class GMMN(LatentGenerative):
    """DCGAN-style generator for images of shape (H, W) or (C, H, W), H and W divisible by 4."""

    def __init__(self, event_shape: tuple[int, ...], config: GMMNConfig = GMMNConfig()):
        super().__init__()
        self.event_shape, self.config = tuple(event_shape), config
        self.net = DCGANGenerator(channels_first(event_shape), config.latent, config.channels)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Images (n, *event_shape) in [0, 1] from latents z (n, latent)."""
        return self.net(z).reshape(-1, *self.event_shape)

    def nll(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """MMD^2 between x (n, *event) and n samples G(noise); noise is required."""
        if noise is None:
            raise ValueError("the GMMN fit loss needs noise: the latents of the samples it compares with x")
        y = self.generate(noise)
        return mmd2(x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1), self.config.bandwidths)

"""Networks of the image generators: perceptron, DCGAN and BigGAN-style ResNet generators, and
spectrally normalised critics (Miyato et al. 2018) for a GAN's discriminator.

Spectral normalisation divides every weight W of a critic by the largest singular value sigma(W)
of W reshaped to (out, in * k * k), estimated at every call by POWER_ITERATIONS steps of power
iteration from a fixed start (Miyato et al. take one step per call from a vector kept between
calls), sigma = u^T W v with u, v held fixed in the gradient as theirs: a critic then has no state
that changes in its forward pass, so the same module runs under `torch.func.vmap` for every seed.
Batch norm in the generators uses the statistics of the current batch only, for the same reason.

Images are (C, H, W), with H and W divisible by 4 (DCGAN) or 8 (ResNet); generators end in a
sigmoid (pixels in [0, 1]); critics read pixels in [0, 1] and rescale them to [-1, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.ple import Generative


POWER_ITERATIONS = 10


def spectral(weight: torch.Tensor) -> torch.Tensor:
    """W / sigma(W), sigma the largest singular value of W as a matrix (out, rest); float32 throughout."""
    w = weight.float()
    m = w.flatten(1)
    with torch.no_grad():
        u = torch.ones(m.shape[0], device=m.device) / math.sqrt(m.shape[0])
        for _ in range(POWER_ITERATIONS):
            v = F.normalize(m.T @ u, dim=0)
            u = F.normalize(m @ v, dim=0)
    return w / (u @ m @ v)


class SNConv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, spectral(self.weight), self.bias, self.stride, self.padding)


class SNLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, spectral(self.weight), self.bias)


def norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, track_running_stats=False)


class MLPGenerator(nn.Module):
    """z (n, latent) -> [Linear(c), ReLU] x 2 -> Linear(C H W) -> sigmoid: (n, C, H, W)."""

    def __init__(self, shape: tuple[int, int, int], latent: int, channels: int):
        super().__init__()
        self.shape = shape
        self.body = nn.Sequential(nn.Linear(latent, channels), nn.ReLU(), nn.Linear(channels, channels), nn.ReLU(),
                                  nn.Linear(channels, math.prod(shape)), nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z).reshape(-1, *self.shape)


class MLPTrunk(nn.Module):
    """(n, C, H, W) -> flat -> [SN linear(c), LeakyReLU 0.1] x 2: features (n, c)."""

    def __init__(self, shape: tuple[int, int, int], channels: int):
        super().__init__()
        self.width = channels
        self.body = nn.Sequential(nn.Flatten(), SNLinear(math.prod(shape), channels), nn.LeakyReLU(0.1),
                                  SNLinear(channels, channels), nn.LeakyReLU(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class DCGANGenerator(nn.Module):
    """z (n, latent) -> Linear -> (2c, H/4, W/4) -> [BN, ReLU, ConvT stride 2] x 2 -> sigmoid: (n, C, H, W)."""

    def __init__(self, shape: tuple[int, int, int], latent: int, channels: int):
        super().__init__()
        out, height, width = shape
        if height % 4 or width % 4:
            raise ValueError(f"the DCGAN generator needs image sides divisible by 4, got {height}x{width}")
        c = channels
        self.start = (2 * c, height // 4, width // 4)
        self.project = nn.Linear(latent, math.prod(self.start))
        self.body = nn.Sequential(
            norm(2 * c), nn.ReLU(),
            nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1),  # (c, H/2, W/2)
            norm(c), nn.ReLU(),
            nn.ConvTranspose2d(c, out, 4, stride=2, padding=1),  # (C, H, W)
            nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.project(z).reshape(-1, *self.start))


class DCGANTrunk(nn.Module):
    """(n, C, H, W) -> [SN conv 4x4 stride 2, LeakyReLU 0.1] x 2 -> flat: features (n, 2c H/4 W/4)."""

    def __init__(self, shape: tuple[int, int, int], channels: int):
        super().__init__()
        inp, height, width = shape
        c = channels
        self.width = 2 * c * (height // 4) * (width // 4)
        self.body = nn.Sequential(SNConv2d(inp, c, 4, stride=2, padding=1), nn.LeakyReLU(0.1),
                                  SNConv2d(c, 2 * c, 4, stride=2, padding=1), nn.LeakyReLU(0.1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class UpBlock(nn.Module):
    """BigGAN's generator block: BN, ReLU, upsample x2, conv 3x3, BN, ReLU, conv 3x3, plus an upsampled
    1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.main = nn.Sequential(norm(c_in), nn.ReLU(), nn.Upsample(scale_factor=2),
                                  nn.Conv2d(c_in, c_out, 3, padding=1), norm(c_out), nn.ReLU(),
                                  nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(c_in, c_out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.skip(x)


class ResNetGenerator(nn.Module):
    """z -> Linear -> (c, H/8, W/8) -> 3 UpBlocks -> BN, ReLU, conv 3x3 -> sigmoid: (n, C, H, W)."""

    def __init__(self, shape: tuple[int, int, int], latent: int, channels: int):
        super().__init__()
        out, height, width = shape
        if height % 8 or width % 8:
            raise ValueError(f"the ResNet generator needs image sides divisible by 8, got {height}x{width}")
        self.start = (channels, height // 8, width // 8)
        self.project = nn.Linear(latent, math.prod(self.start))
        self.body = nn.Sequential(*(UpBlock(channels, channels) for _ in range(3)), norm(channels), nn.ReLU(),
                                  nn.Conv2d(channels, out, 3, padding=1), nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.project(z).reshape(-1, *self.start))


class DownBlock(nn.Module):
    """SNGAN's critic block: (ReLU,) SN conv 3x3, ReLU, SN conv 3x3, (avg-pool x2), plus an SN 1x1
    shortcut (pooled); `first` omits the leading ReLU, as for the raw image."""

    def __init__(self, c_in: int, c_out: int, down: bool, first: bool = False):
        super().__init__()
        pool = [nn.AvgPool2d(2)] if down else []
        self.main = nn.Sequential(*([] if first else [nn.ReLU()]), SNConv2d(c_in, c_out, 3, padding=1), nn.ReLU(),
                                  SNConv2d(c_out, c_out, 3, padding=1), *pool)
        self.skip = nn.Sequential(SNConv2d(c_in, c_out, 1), *pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.skip(x)


class ResNetTrunk(nn.Module):
    """(n, C, H, W) -> 2 pooling DownBlocks, 2 plain ones -> ReLU -> sum over pixels: features (n, c)."""

    def __init__(self, shape: tuple[int, int, int], channels: int):
        super().__init__()
        c = self.width = channels
        self.body = nn.Sequential(DownBlock(shape[0], c, down=True, first=True), DownBlock(c, c, down=True),
                                  DownBlock(c, c, down=False), DownBlock(c, c, down=False), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).sum(dim=(2, 3))


class Critic(nn.Module):
    """D(y; X) = SN linear([phi(y), mean_{x in X} phi(x)]), phi a trunk above on pixels rescaled to [-1, 1]:
    each image is scored against the real batch X it is compared with, so that the critic can tell
    which data set the fakes should resemble when the data sets vary (as for the hypernetwork methods)."""

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.trunk = trunk
        self.head = SNLinear(2 * trunk.width, 1)

    def forward(self, images: torch.Tensor, real: int) -> torch.Tensor:
        """Scores (n,) of images (n, C, H, W) whose first `real` rows are the real batch X."""
        features = self.trunk(2 * images - 1)
        reference = features[:real].mean(dim=0, keepdim=True).expand_as(features)
        return self.head(torch.cat([features, reference], dim=-1)).squeeze(-1)


class LatentGenerative(Generative):
    """A generator of images G(z), z ~ N(0, I) of dimension `config.latent`; with sampling bias lambda
    its samples are G(sqrt(lambda) z). Subclasses define `generate(z)`."""

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.config.latent, generator=generator)

    def rsample(self, noise: torch.Tensor, sampling_bias: float = 1.0) -> torch.Tensor:
        return self.generate(math.sqrt(sampling_bias) * noise)


def channels_first(event_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(H, W) -> (1, H, W); (C, H, W) unchanged."""
    return (1, *event_shape) if len(event_shape) == 2 else tuple(event_shape)

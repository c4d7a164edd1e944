"""A denoising diffusion model (DDPM; Ho et al. 2020) sampled by DDIM (Song et al. 2021), as a `Generative`.

Pixels x in [0, 1] are mapped to x0 = 2 x - 1. The forward process over t = 1..T has
alpha_bar_t = prod_{s <= t} (1 - beta_s), with the cosine schedule (Nichol & Dhariwal 2021)

    alpha_bar_t = f(t) / f(0),  f(t) = cos^2(pi/2 (t/T + 0.008) / 1.008),  beta_t clipped at 0.999,

or the linear one (beta from 1e-4 to 0.02, scaled by 1000 / T). The denoiser eps_theta(x_t, t)
predicts the noise; the fit loss is the simple loss per image, summed over pixels:

    nll(x) = E_{t, eps} || eps - eps_theta(sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, t) ||^2.

Sampling: DDIM from x_T over `sampling_steps` evenly spaced times t_k > t_{k+1}, with
x0_hat = (x_t - sqrt(1 - a_t) eps_theta) / sqrt(a_t) clipped to [-1, 1], eps_hat recomputed from
x0_hat and x_t (a = alpha_bar), and

    x_s = sqrt(a_s) x0_hat + sqrt(1 - a_s - sigma^2) eps_hat + sigma z,
    sigma = eta sqrt((1 - a_s) / (1 - a_t) (1 - a_t / a_s)).

eta = 0 is deterministic: `rsample` is a differentiable function of the weights and x_T, so the
PLE penalty reaches H through Y; eta = 1 with all T steps is DDPM's ancestral sampler (`sample`).
A sample with sampling bias lambda starts from x_T = sqrt(lambda) z, as the VAE's latent.

Presets (the denoiser): `small` is a perceptron on the flat image for 8x8 digits on a CPU; `mnist`
and `cifar10` a small U-Net (two resolutions, residual blocks with group norm) for a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.networks import channels_first
from models.ple import Generative

SCHEDULES = ("cosine", "linear")
DENOISERS = ("mlp", "unet")


@dataclass(frozen=True)
class DiffusionConfig:
    denoiser: str = "mlp"  # mlp | unet
    hidden: int = 256  # units per layer (mlp) or channels of the first resolution (unet)
    depth: int = 3  # hidden layers (mlp)
    timesteps: int = 100  # T
    sampling_steps: int = 5  # DDIM steps of `rsample`
    schedule: str = "cosine"  # cosine | linear

    def __post_init__(self):
        if self.denoiser not in DENOISERS:
            raise ValueError(f"unknown denoiser {self.denoiser!r}; use one of {', '.join(DENOISERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown noise schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}")
        if not 1 <= self.sampling_steps <= self.timesteps:
            raise ValueError(f"sampling_steps must be in [1, timesteps = {self.timesteps}], got {self.sampling_steps}")


PRESETS = {
    "small": DiffusionConfig(),
    "mnist": DiffusionConfig(denoiser="unet", hidden=32),
    "cifar10": DiffusionConfig(denoiser="unet", hidden=64),
}


def alpha_bars(timesteps: int, schedule: str, device: torch.device | None = None) -> torch.Tensor:
    """alpha_bar_t for t = 0..T (alpha_bar_0 = 1), float64, as in the module docstring."""
    t = torch.arange(timesteps + 1, dtype=torch.float64, device=device)
    if schedule == "cosine":
        f = torch.cos((t / timesteps + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    else:
        scale = 1000 / timesteps
        betas = torch.linspace(1e-4 * scale, 0.02 * scale, timesteps, dtype=torch.float64, device=device)
    return torch.cat([torch.ones(1, dtype=torch.float64, device=device), torch.cumprod(1 - betas, 0)])


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-style sinusoidal features of the integer time t: (n,) -> (n, dim), frequencies
    10000^(-i / (dim / 2)) for i < dim / 2."""
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(dim // 2, device=t.device) / (dim // 2))
    angles = t.float()[:, None] * frequencies[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class MLPDenoiser(nn.Module):
    """eps_theta: [flat x_t, embedding of t] -> depth x [Linear, SiLU] -> Linear: the flat noise."""

    def __init__(self, shape: tuple[int, int, int], config: DiffusionConfig, embedding: int = 32):
        super().__init__()
        pixels, self.embedding = math.prod(shape), embedding
        layers: list[nn.Module] = []
        for i in range(config.depth):
            layers += [nn.Linear(pixels + embedding if i == 0 else config.hidden, config.hidden), nn.SiLU()]
        self.body = nn.Sequential(*layers, nn.Linear(config.hidden, pixels))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        joined = torch.cat([x.flatten(1), time_embedding(t, self.embedding)], dim=-1)
        return self.body(joined).reshape(x.shape)


class ResidualBlock(nn.Module):
    """GroupNorm, SiLU, conv 3x3, plus the time embedding, GroupNorm, SiLU, conv 3x3; 1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int, embedding: int):
        super().__init__()
        self.first = nn.Sequential(nn.GroupNorm(min(8, c_in), c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))
        self.time = nn.Linear(embedding, c_out)
        self.second = nn.Sequential(nn.GroupNorm(8, c_out), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.first(x) + self.time(emb)[:, :, None, None]
        return self.second(h) + self.skip(x)


class UNet(nn.Module):
    """eps_theta with two resolutions: blocks at c and 2c channels, stride-2 convolutions down,
    nearest-neighbour upsampling with skip connections up (sides divisible by 4)."""

    def __init__(self, shape: tuple[int, int, int], config: DiffusionConfig):
        super().__init__()
        channels, c = shape[0], config.hidden
        if shape[1] % 4 or shape[2] % 4:
            raise ValueError(f"the U-Net needs image sides divisible by 4, got {shape[1]}x{shape[2]}")
        self.embed = nn.Sequential(nn.Linear(c, 4 * c), nn.SiLU(), nn.Linear(4 * c, 4 * c))
        self.inp = nn.Conv2d(channels, c, 3, padding=1)
        self.down1, self.pool1 = ResidualBlock(c, c, 4 * c), nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.down2, self.pool2 = ResidualBlock(c, 2 * c, 4 * c), nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1)
        self.middle = ResidualBlock(2 * c, 2 * c, 4 * c)
        self.up2 = ResidualBlock(4 * c, 2 * c, 4 * c)
        self.up1 = ResidualBlock(3 * c, c, 4 * c)
        self.out = nn.Sequential(nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.embed(time_embedding(t, self.inp.out_channels))
        h1 = self.down1(self.inp(x), emb)  # (c, H, W)
        h2 = self.down2(self.pool1(h1), emb)  # (2c, H/2, W/2)
        h = self.middle(self.pool2(h2), emb)  # (2c, H/4, W/4)
        h = self.up2(torch.cat([F.interpolate(h, scale_factor=2.0), h2], dim=1), emb)
        h = self.up1(torch.cat([F.interpolate(h, scale_factor=2.0), h1], dim=1), emb)
        return self.out(h)


class Diffusion(Generative):
    """DDPM for images of shape (H, W) or (C, H, W) with pixels in [0, 1]."""

    def __init__(self, event_shape: tuple[int, ...], config: DiffusionConfig = DiffusionConfig()):
        super().__init__()
        self.event_shape, self.config = tuple(event_shape), config
        self.shape = channels_first(event_shape)
        self.pixels = math.prod(self.shape)
        self.denoiser = MLPDenoiser(self.shape, config) if config.denoiser == "mlp" else UNet(self.shape, config)

    def schedule(self, device: torch.device) -> torch.Tensor:
        return alpha_bars(self.config.timesteps, self.config.schedule, device).float()

    def nll(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The simple loss per image, summed over pixels; noise[:, :P] is eps, noise[:, P] a uniform for t."""
        if noise is None:
            raise ValueError("the diffusion fit loss needs noise: the eps and times of the noised images")
        x0 = 2 * x.reshape(-1, *self.shape) - 1
        eps = noise[:, : self.pixels].reshape(x0.shape)
        t = (noise[:, self.pixels] * self.config.timesteps).long().clamp(0, self.config.timesteps - 1) + 1
        a = self.schedule(x.device)[t][:, None, None, None]
        predicted = self.denoiser(a.sqrt() * x0 + (1 - a).sqrt() * eps, t)
        return (predicted - eps).pow(2).flatten(1).sum(-1).mean()

    def noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, 2 P + 1): eps of the fit loss, a uniform for its time, then x_T of `rsample` (P pixels)."""
        return torch.cat([torch.randn(n, self.pixels, generator=generator), torch.rand(n, 1, generator=generator),
                          torch.randn(n, self.pixels, generator=generator)], dim=1)

    def ddim(self, x_t: torch.Tensor, steps: int, eta: float = 0.0, z: torch.Tensor | None = None) -> torch.Tensor:
        """x0 from x_T (n, C, H, W) in `steps` DDIM steps; eta > 0 needs z (steps, n, C, H, W) of N(0, I)."""
        a = self.schedule(x_t.device)
        times = torch.linspace(self.config.timesteps, 0, steps + 1).round().long().tolist()
        x = x_t
        for k, (t, s) in enumerate(zip(times[:-1], times[1:])):
            eps = self.denoiser(x, torch.full((x.shape[0],), t, device=x.device))
            x0 = ((x - (1 - a[t]).sqrt() * eps) / a[t].sqrt()).clamp(-1, 1)
            eps = (x - a[t].sqrt() * x0) / (1 - a[t]).sqrt()
            sigma = eta * ((1 - a[s]) / (1 - a[t]) * (1 - a[t] / a[s])).sqrt()
            x = a[s].sqrt() * x0 + (1 - a[s] - sigma ** 2).clamp_min(0).sqrt() * eps
            if eta > 0:
                x = x + sigma * z[k]
        return x

    def rsample(self, noise: torch.Tensor, sampling_bias: float = 1.0) -> torch.Tensor:
        x_t = math.sqrt(sampling_bias) * noise[:, self.pixels + 1:].reshape(-1, *self.shape)
        x0 = self.ddim(x_t, self.config.sampling_steps)
        return ((x0 + 1) / 2).clamp(0, 1).reshape(-1, *self.event_shape)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, steps: int | None = None, eta: float = 1.0) -> torch.Tensor:
        """n images by DDIM with `steps` (default T) and `eta` (default 1: DDPM's ancestral sampler)."""
        steps = steps or self.config.timesteps
        device = next(self.parameters()).device
        x_t = torch.randn(n, *self.shape, generator=generator).to(device)
        z = torch.randn(steps, n, *self.shape, generator=generator).to(device) if eta > 0 else None
        return ((self.ddim(x_t, steps, eta, z) + 1) / 2).clamp(0, 1).reshape(-1, *self.event_shape)

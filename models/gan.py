"""An adversarially trained GAN (Goodfellow et al. 2014) as a two-player `Generative`.

Generator G maps z ~ N(0, I) to an image; critic D (the discriminator, spectrally normalised) gives
each image a score, reading it beside the mean features of the real batch X it is compared with
(`models.networks.Critic`: D(y; X)), so that a critic can hold a generator to the data set at hand
when the data sets vary, as they do while a hypernetwork learns to map data sets to generators.
With fake images G(z) and real images x of X, the two losses are

    hinge            L_D = E relu(1 - D(x; X)) + E relu(1 + D(G(z); X)),     L_G = -E D(G(z); X)
    non_saturating   L_D = E softplus(-D(x; X)) + E softplus(D(G(z); X)),    L_G = E softplus(-D(G(z); X))

L_G is the fit loss (`nll`) that mle, hyper_mle and ple minimise over G's weights (for the
hypernetwork methods H emits G's weights from the data; D is the `adversary`, trained alongside on
L_D, one step of D per step of G). Samples with sampling bias lambda are G(sqrt(lambda) z).

Presets: `small` (perceptrons, 8x8 digits, a CPU), `mnist` (DCGAN, 28x28), `cifar10` (a BigGAN-style
ResNet generator and an SNGAN ResNet critic, 32x32, for a GPU); `models.networks` has the bodies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.networks import (Critic, DCGANGenerator, DCGANTrunk, LatentGenerative, MLPGenerator, MLPTrunk,
                             ResNetGenerator, ResNetTrunk, channels_first)

LOSSES = ("hinge", "non_saturating")
ARCHITECTURES = {"mlp": (MLPGenerator, MLPTrunk), "dcgan": (DCGANGenerator, DCGANTrunk),
                 "resnet": (ResNetGenerator, ResNetTrunk)}  # generator and critic trunk


@dataclass(frozen=True)
class GANConfig:
    latent: int = 16  # dimension of z
    channels: int = 64  # width of the generator (MLP: hidden units; DCGAN: its last map; ResNet: every block)
    critic_channels: int = 64  # width of the critic
    architecture: str = "mlp"  # mlp | dcgan | resnet
    loss: str = "hinge"  # hinge | non_saturating

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown GAN architecture {self.architecture!r}; use one of {', '.join(ARCHITECTURES)}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown GAN loss {self.loss!r}; use one of {', '.join(LOSSES)}")


PRESETS = {
    "small": GANConfig(),
    "mnist": GANConfig(latent=64, channels=64, critic_channels=64, architecture="dcgan"),
    "cifar10": GANConfig(latent=128, channels=256, critic_channels=128, architecture="resnet"),
}


class GAN(LatentGenerative):
    """Generator and critic for images of shape (H, W) or (C, H, W)."""

    adversary = "critic"
    betas = (0.5, 0.999)  # Adam's betas of DCGAN, for both players

    def __init__(self, event_shape: tuple[int, ...], config: GANConfig = GANConfig()):
        super().__init__()
        self.event_shape, self.config = tuple(event_shape), config
        make_generator, make_trunk = ARCHITECTURES[config.architecture]
        self.generator = make_generator(channels_first(event_shape), config.latent, config.channels)
        self.critic = Critic(make_trunk(channels_first(event_shape), config.critic_channels))

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Images (n, *event_shape) in [0, 1] from latents z (n, latent)."""
        return self.generator(z).reshape(-1, *self.event_shape)

    def scores(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(D(x; x), D(G(noise); x)): the real batch x and the fakes, each scored against x."""
        images = torch.cat([x.reshape(-1, *channels_first(self.event_shape)),
                            self.generator(noise)])
        scores = self.critic(images, real=x.shape[0])
        return scores[: x.shape[0]], scores[x.shape[0]:]

    def nll(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """L_G of the fakes G(noise), scored against the real batch x."""
        fake = self.scores(x, noise)[1]
        return -fake.mean() if self.config.loss == "hinge" else F.softplus(-fake).mean()

    def adversary_loss(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """L_D on the real images x and the fakes G(noise)."""
        real, fake = self.scores(x, noise)
        if self.config.loss == "hinge":
            return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
        return F.softplus(-real).mean() + F.softplus(fake).mean()

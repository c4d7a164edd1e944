"""The reference classifier: a small LeNet-style CNN trained on the real data.

Its penultimate activations are the feature space of `fid_classifier` (the "LeNet-FID" of the MAD
paper, Alemohammad et al. 2023, which replaces Inception features for MNIST) and its predictions
label generated samples for `minority_ratio` (docs/metrics.md).

    x (N, C, H, W) in [0, 1] -> conv3x3(16) ReLU -> conv3x3(32) ReLU -> maxpool 2
      -> adaptive avg pool 4x4 -> Linear(512, features) BatchNorm = features(x) -> ReLU
      -> Linear(classes) = logits

The adaptive pooling lets one architecture read 8x8 digits, 28x28 MNIST and 32x32 CIFAR-10. The
batch norm keeps every feature alive: without it about half of the 32 ReLU units never fire after
training on digits, which halves the feature space and makes its covariance singular.
The constructor arguments are kept in `config`, so a checkpoint (`tasks.infra.checkpoints`) rebuilds it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

class Classifier(nn.Module):
    """LeNet-style CNN for images (N, C, H, W) with H, W >= 2 in [0, 1]."""

    def __init__(self, channels: int, classes: int, features: int = 32):
        super().__init__()
        self.config = {"channels": channels, "classes": classes, "features": features}
        self.trunk = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(32 * 4 * 4, features), nn.BatchNorm1d(features),
        )
        self.head = nn.Linear(features, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate pre-activations (N, features): no ReLU, so no unit is constant at 0 on a class
        and the feature covariance of FID stays full rank."""
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, classes)."""
        return self.head(F.relu(self.trunk(x)))


def train_classifier(images: torch.Tensor, labels: torch.Tensor, classes: int, *, epochs: int, batch_size: int,
                     lr: float, generator: torch.Generator, device: torch.device, features: int = 32) -> Classifier:
    """A new classifier (initialised from `generator`) fitted by `fit_classifier`; images (N, C, H, W) in [0, 1].

    The same generator gives the same model on CPU. Returns the model in eval mode on the CPU.
    """
    seed = int(torch.randint(2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Classifier(images.shape[1], classes, features)
    return fit_classifier(model, images, labels, epochs=epochs, batch_size=batch_size, lr=lr,
                          generator=generator, device=device)


def fit_classifier(model: Classifier, images: torch.Tensor, labels: torch.Tensor, *, epochs: int, batch_size: int,
                   lr: float, generator: torch.Generator, device: torch.device,
                   mask: dict[str, torch.Tensor] | None = None) -> Classifier:
    """Adam on the cross entropy over minibatches shuffled by `generator`, updating `model` in place.

    `mask` ({parameter name: 0/1 tensor}) freezes every entry where it is 0: its gradient is zeroed
    before each step, so Adam's moments, and the entry, never move. Returns the model in eval mode on the CPU.
    """
    model = model.to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    masks = [(p, mask[name].to(device)) for name, p in model.named_parameters()] if mask is not None else []
    x, y = images.to(device), labels.to(device)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).to(device).split(batch_size):
            if len(batch) < 2:  # batch norm needs two samples: a leftover single one sits this epoch out
                continue
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimiser.zero_grad()
            loss.backward()
            for parameter, keep in masks:
                parameter.grad.mul_(keep)
            optimiser.step()
    return model.eval().cpu()


@torch.no_grad()
def accuracy(model: Classifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> float:
    """Share of images whose arg-max logit is their label."""
    device = next(model.parameters()).device
    correct = sum(int((model(x.to(device)).argmax(1) == y.to(device)).sum())
                  for x, y in zip(images.split(batch_size), labels.split(batch_size)))
    return correct / len(labels)

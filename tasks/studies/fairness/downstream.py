"""The downstream classifier of y, retrained on every generation's data, three ways (AIM-Fair).

- scratch:   a new classifier trained on D_g;
- finetune:  the classifier pre-trained on the real biased data D_0, every parameter fine-tuned on D_g;
- selective: the same pre-trained classifier with only the top k% of its parameter entries updated.

Selective fine-tuning ranks entries by gradient differences of the pre-trained model f's loss L,
each gradient over a whole set (eval mode):

    bias sensitivity   b_j = |dL/dtheta_j (D_g balanced) - dL/dtheta_j (D_g)|
    domain sensitivity d_j = |dL/dtheta_j (D_0)           - dL/dtheta_j (D_g)|
    score_j = b_j - d_j,  update the entries with the k% largest scores

so the updated entries are those that react to the bias of the data (D_g against D_g reweighted to
equal (y, s) groups) and not to the domain gap (real D_0 against generated D_g). At generation 0,
D_g = D_0 and only the bias term remains.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F

from models.classifier import Classifier, fit_classifier, train_classifier
from tasks.studies.fairness.params import DownstreamParams

Mode = Literal["scratch", "finetune", "selective"]


def gradients(model: Classifier, images: torch.Tensor, labels: torch.Tensor,
              weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Gradient of the (weighted) mean cross entropy over all the images, in eval mode: {name: tensor}."""
    model.eval().zero_grad()
    losses = F.cross_entropy(model(images), labels, reduction="none")
    loss = losses.mean() if weights is None else (losses * weights).sum() / weights.sum()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return {name: g.detach() for (name, _), g in zip(model.named_parameters(), grads)}


def selection_mask(model: Classifier, real: tuple[torch.Tensor, torch.Tensor], data: tuple[torch.Tensor, torch.Tensor],
                   balancing: torch.Tensor, top_k: float) -> dict[str, torch.Tensor]:
    """0/1 masks of the top_k % entries by score b - d (module docstring); real and data are (images, y)."""
    g_real, g_data = gradients(model, *real), gradients(model, *data)
    g_balanced = gradients(model, *data, weights=balancing)
    scores = {name: (g_balanced[name] - g_data[name]).abs() - (g_real[name] - g_data[name]).abs() for name in g_data}
    flat = torch.cat([score.flatten() for score in scores.values()])
    count = max(1, round(top_k / 100 * len(flat)))
    chosen = torch.zeros(len(flat))
    chosen[torch.sort(flat, descending=True, stable=True).indices[:count]] = 1.0  # ties: the earlier entry
    parts = chosen.split([score.numel() for score in scores.values()])
    return {name: part.view_as(score) for (name, score), part in zip(scores.items(), parts)}


def train_downstream(mode: Mode, config: DownstreamParams, data: tuple[torch.Tensor, torch.Tensor],
                     pretrained: Classifier, real: tuple[torch.Tensor, torch.Tensor], balancing: torch.Tensor,
                     generator: torch.Generator, device: torch.device) -> Classifier:
    """The downstream classifier of `mode` trained on data = (images (N, C, H, W) in [0, 1], y (N,))."""
    if mode == "scratch":
        return train_classifier(*data, 2, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                                generator=generator, device=device, features=config.features)
    mask = selection_mask(pretrained, real, data, balancing, config.top_k) if mode == "selective" else None
    return fit_classifier(copy.deepcopy(pretrained), *data, epochs=config.finetune_epochs,
                          batch_size=config.batch_size, lr=config.finetune_lr, generator=generator, device=device,
                          mask=mask)


@torch.no_grad()
def probabilities(model: Classifier, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Softmax class probabilities (N, classes) of images (N, C, H, W) in [0, 1]."""
    return torch.cat([model(part).softmax(-1) for part in images.split(batch_size)])


@torch.no_grad()
def predict(model: Classifier, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Arg-max labels (N,) of images (N, C, H, W) in [0, 1]."""
    return torch.cat([model(part).argmax(1) for part in images.split(batch_size)])

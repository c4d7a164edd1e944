"""Frechet distances and precision/recall between real and generated images, in a feature space.

Frechet distance (Heusel et al. 2017) between Gaussians fitted to two feature sets a, b:

    FD = ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)),

mu the mean, S the covariance (np.cov, n - 1), computed in float64 and passed to pytorch-fid's
`calculate_frechet_distance`. Two feature spaces, never mixed (docs/metrics.md):

- `fid_classifier`: penultimate features of the reference classifier (`models.classifier`);
- `fid_inception`: pool3 (2048-d) of pytorch-fid's InceptionV3 with its FID weights
  (`tasks.studies.images.inception`).

Improved precision and recall (Kynkaanniemi et al. 2019): each sample's ball reaches its k-th
nearest neighbour in its own set (`tasks.diversity.KNNBalls`); precision is the share of fake samples
inside some real ball, recall the share of real samples inside some fake ball.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch

from models.classifier import Classifier
from tasks.diversity import KNNBalls
from tasks.infra.device import resolve

Extractor = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def extract_features(extractor: Extractor, images: torch.Tensor, batch_size: int = 256,
                     device: torch.device | None = None) -> np.ndarray:
    """Features (N, D) float64 of uint8 images (N, H, W) or (N, C, H, W), scaled to [0, 1] batch by batch
    on `device` (default: CUDA when present), where the extractor must live."""
    if images.dtype != torch.uint8:
        raise TypeError(f"extract_features takes uint8 images, got {images.dtype}")
    images = images[:, None] if images.ndim == 3 else images
    device = resolve(device)
    batches = [extractor(batch.to(device).float().div_(255)).double().cpu() for batch in images.split(batch_size)]
    return torch.cat(batches).numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between the Gaussians fitted to feature matrices a (N, D) and b (M, D)."""
    from pytorch_fid.fid_score import calculate_frechet_distance  # imports torchvision: 2.5 s, image studies only

    with warnings.catch_warnings():  # pytorch-fid 0.3 passes scipy's deprecated sqrtm(disp=False)
        warnings.filterwarnings("ignore", message="The `disp` argument is deprecated", category=DeprecationWarning)
        return float(calculate_frechet_distance(*_moments(a), *_moments(b)))


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D), n - 1 normalised, in float64."""
    x = np.asarray(x, dtype=np.float64)
    return x.mean(axis=0), np.cov(x, rowvar=False)


def classifier_extractor(model: Classifier, device: torch.device | None = None) -> Extractor:
    """The reference classifier's penultimate features (moves the model to `device`)."""
    return model.eval().to(resolve(device)).features


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 5) -> tuple[float, float]:
    """Improved precision and recall of `fake` against `real`, feature matrices (N, D) and (M, D)."""
    return KNNBalls(real, k).share_inside(fake), KNNBalls(fake, k).share_inside(real)

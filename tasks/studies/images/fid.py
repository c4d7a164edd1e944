"""Frechet distances and precision/recall between real and generated images, in a feature space.

Frechet distance (Heusel et al. 2017) between Gaussians fitted to two feature sets a, b:

    FD = ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)),

mu the mean, S the covariance (np.cov, n - 1), computed in float64 and passed to pytorch-fid's
`calculate_frechet_distance`. Two feature spaces, never mixed (docs/metrics.md):

- `fid_classifier`: penultimate features of the reference classifier (`models.classifier`);
- `fid_inception`: pool3 (2048-d) of pytorch-fid's InceptionV3 with its FID weights, read from a
  local file only: without the file it stops with `InputUnavailableError`, never downloads.

Improved precision and recall (Kynkaanniemi et al. 2019): each sample's ball reaches its k-th
nearest neighbour in its own set; precision is the share of fake samples inside some real ball,
recall the share of real samples inside some fake ball.
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from pytorch_fid.fid_score import calculate_frechet_distance
from pytorch_fid.inception import (
    FID_WEIGHTS_URL, FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2, InceptionV3, _inception_v3,
)
from torch import nn
from torchvision.models.inception import Inception3

from models.classifier import Classifier
from tasks.errors import InputUnavailableError
from tasks.infra.device import default_device

Extractor = Callable[[torch.Tensor], torch.Tensor]
INCEPTION_WEIGHTS = FID_WEIGHTS_URL.rsplit("/", 1)[1]  # pt_inception-2015-12-05-6726825d.pth
CDIST_ELEMENTS = 2**23  # distances held at once by precision_recall (64 MB in float64)


def _on(device: torch.device | None) -> torch.device:
    return device if device is not None else default_device()


@torch.no_grad()
def extract_features(extractor: Extractor, images: torch.Tensor, batch_size: int = 256,
                     device: torch.device | None = None) -> np.ndarray:
    """Features (N, D) float64 of uint8 images (N, H, W) or (N, C, H, W), scaled to [0, 1] batch by batch
    on `device` (default: CUDA when present), where the extractor must live."""
    if images.dtype != torch.uint8:
        raise TypeError(f"extract_features takes uint8 images, got {images.dtype}")
    images = images[:, None] if images.ndim == 3 else images
    device = _on(device)
    batches = [extractor(batch.to(device).float().div_(255)).double().cpu() for batch in images.split(batch_size)]
    return torch.cat(batches).numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between the Gaussians fitted to feature matrices a (N, D) and b (M, D)."""
    with warnings.catch_warnings():  # pytorch-fid 0.3 passes scipy's deprecated sqrtm(disp=False)
        warnings.filterwarnings("ignore", message="The `disp` argument is deprecated", category=DeprecationWarning)
        return float(calculate_frechet_distance(*_moments(a), *_moments(b)))


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D), n - 1 normalised, in float64."""
    x = np.asarray(x, dtype=np.float64)
    return x.mean(axis=0), np.cov(x, rowvar=False)


def classifier_extractor(model: Classifier, device: torch.device | None = None) -> Extractor:
    """The reference classifier's penultimate features (moves the model to `device`)."""
    return model.eval().to(_on(device)).features


def inception_weights_path() -> Path:
    """Where torch hub (and so pytorch-fid) keeps the FID weights: $TORCH_HOME/hub/checkpoints/."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS


def fid_inception() -> Inception3:
    """pytorch-fid's `fid_inception_v3` network with random weights instead of its download, for tests
    and benchmarks (He-normal convolutions: with PyTorch's default initialisation the signal shrinks
    to ~1e-8 by pool3 and every image gets the same features)."""
    net = _inception_v3(num_classes=1008, aux_logits=False, weights=None)  # the same patches as fid_inception_v3
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE_1(1280)
    net.Mixed_7c = FIDInceptionE_2(2048)
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return net


@contextlib.contextmanager
def _hub_holding(weights: Path) -> Iterator[None]:
    """torch hub's cache pointed, for the duration, at a temporary folder holding `weights` under the
    name pytorch-fid asks for."""
    with tempfile.TemporaryDirectory() as hub:
        cached = Path(hub) / "checkpoints" / INCEPTION_WEIGHTS
        cached.parent.mkdir()
        cached.symlink_to(Path(weights).resolve())
        previous = torch.hub._hub_dir  # None unless set_dir was called: then TORCH_HOME decides again
        torch.hub.set_dir(hub)
        try:
            yield
        finally:
            torch.hub._hub_dir = previous


def pool3_extractor(weights: Path, device: torch.device | None = None) -> Extractor:
    """pytorch-fid's InceptionV3 pool3 features (N, 2048) with its FID network's weights read from the
    file `weights`; grey images repeated to RGB.

    InceptionV3 (resize to 299x299 bilinear, [0, 1] -> [-1, 1], the block layout) builds its network
    with `load_state_dict_from_url`, which reads torch hub's cache and downloads only when the file is
    absent there. Pointing the cache at `weights` keeps every line of pytorch-fid's model while all file
    access stays local; the test checks the features equal those of pytorch-fid's own model.
    """
    with _hub_holding(weights):
        model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval().to(_on(device))

    def extract(x: torch.Tensor) -> torch.Tensor:
        return model(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)[0].flatten(1)  # (N, 2048, 1, 1) -> (N, 2048)
    return extract


def inception_extractor(weights: Path | None = None, device: torch.device | None = None) -> Extractor:
    """Pool3 features with pytorch-fid's FID weights from `weights` (default: torch hub's cache)."""
    path = Path(weights) if weights is not None else inception_weights_path()
    if not path.is_file():
        raise InputUnavailableError(f"fid_inception needs pytorch-fid's Inception weights {INCEPTION_WEIGHTS}; put "
                                    f"the file at {path} (download from {FID_WEIGHTS_URL} on a machine with internet)")
    return pool3_extractor(path, device)


def random_inception(device: torch.device | None = None) -> Extractor:
    """The same pool3 extractor with random weights (from torch's global generator): tests, benchmarks."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / INCEPTION_WEIGHTS
        torch.save(fid_inception().state_dict(), path)
        return pool3_extractor(path, device)


def _covered(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """For each query, whether it lies in some ball ||q - c_i|| <= r_i; chunked over queries."""
    rows = max(1, CDIST_ELEMENTS // len(centres))
    return torch.cat([(torch.cdist(q, centres) <= radii).any(dim=1) for q in queries.split(rows)])


def _knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each point to its k-th nearest neighbour in x, itself excluded."""
    if not 0 < k < len(x):
        raise ValueError(f"precision_recall needs 0 < k < number of samples, got k={k} for {len(x)} samples")
    rows = max(1, CDIST_ELEMENTS // len(x))
    return torch.cat([torch.cdist(q, x).kthvalue(k + 1, dim=1).values for q in x.split(rows)])


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 5) -> tuple[float, float]:
    """Improved precision and recall of `fake` against `real`, feature matrices (N, D) and (M, D)."""
    r, f = torch.as_tensor(real, dtype=torch.float64), torch.as_tensor(fake, dtype=torch.float64)
    precision = _covered(f, r, _knn_radii(r, k)).double().mean()
    recall = _covered(r, f, _knn_radii(f, k)).double().mean()
    return float(precision), float(recall)

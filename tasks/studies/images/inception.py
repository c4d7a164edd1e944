"""pytorch-fid's InceptionV3 pool3 features (`fid_inception`), from a local weights file only.

Without the file `inception_extractor` stops with `InputUnavailableError` naming it and where to
get it; it never downloads. Imported only by image studies with `fid_inception: true`, tests and
benchmarks (pytorch-fid and torchvision take seconds to import).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from pytorch_fid.inception import (
    FID_WEIGHTS_URL, FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2, InceptionV3, _inception_v3,
)
from torch import nn
from torchvision.models.inception import Inception3

from tasks.errors import InputUnavailableError
from tasks.infra.device import resolve
from tasks.studies.images.fid import Extractor

INCEPTION_WEIGHTS = FID_WEIGHTS_URL.rsplit("/", 1)[1]  # pt_inception-2015-12-05-6726825d.pth


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
        model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval().to(resolve(device))

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

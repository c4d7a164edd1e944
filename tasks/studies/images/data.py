"""Real image data for the self-consuming loop: digits, MNIST and CIFAR-10, offline first.

    digits    sklearn's 1797 8x8 digits (shipped with scikit-learn), pixels 0..16 scaled to
              round(v * 255 / 16); no official split, so `train` is ignored: split with `split`
    mnist     the four official IDX files in <raw_dir>/mnist, each plain or .gz
    cifar10   the official binary version in <raw_dir>/cifar10/cifar-10-batches-bin:
              data_batch_1..5.bin (train), test_batch.bin, fixed-length records (a label byte,
              then 1024 red, 1024 green and 1024 blue bytes, each plane row by row); never the
              pickled python version, whose loading would run any code a planted file holds

Images are uint8, (N, H, W) for grey and (N, C, H, W) for colour. Missing MNIST/CIFAR files are
downloaded once with torchvision when online (AUTOPHAGY_OFFLINE=1 skips the attempt); otherwise
`InputUnavailableError` says in one line which file to put where.
"""

from __future__ import annotations

import gzip
import math
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tasks.errors import InputUnavailableError

DOWNLOAD_TIMEOUT = 10.0  # seconds per socket operation, so an offline attempt fails fast
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # torchvision's first mirror
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR10_ARCHIVE = ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530")
CIFAR10_RECORD = 1 + 3 * 32 * 32  # bytes per image of the binary version


@dataclass(frozen=True)
class ImageSet:
    """images uint8 (N, H, W) or (N, C, H, W); labels int64 (N,); name of the dataset."""

    images: torch.Tensor
    labels: torch.Tensor
    name: str

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(self, index: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index], self.name)


def load_images(name: str, raw_dir: Path, train: bool = True) -> ImageSet:
    """The train (or test) images of `name` ("digits", "mnist", "cifar10"); see the module docstring."""
    raw_dir = Path(raw_dir)
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.rint(digits.images * 255 / 16).astype(np.uint8)
        return ImageSet(torch.from_numpy(images), torch.from_numpy(digits.target).long(), name)
    if name == "mnist":
        prefix = "train" if train else "t10k"
        files = [[f"{prefix}-{kind}", f"{prefix}-{kind}.gz"] for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")]
        fix = f"copy the four IDX files from {MNIST_URL} (or a torchvision MNIST/raw folder) there"
        image_path, label_path = _require(name, raw_dir / "mnist", files, fix)
        images, labels = _read_idx(image_path, 2051), _read_idx(label_path, 2049)
        return _checked(ImageSet(images, labels.long(), name))
    if name == "cifar10":
        batches = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        files = [[f"cifar-10-batches-bin/{batch}.bin"] for batch in batches]
        fix = f"extract cifar-10-binary.tar.gz (the binary version) from {CIFAR10_URL} there"
        images, labels = zip(*map(_read_cifar_batch, _require(name, raw_dir / "cifar10", files, fix)))
        return _checked(ImageSet(torch.cat(images), torch.cat(labels), name))
    raise ValueError(f"unknown image dataset {name!r}; choose digits, mnist or cifar10")


def split(data: ImageSet, test_fraction: float, generator: torch.Generator) -> tuple[ImageSet, ImageSet]:
    """(train, test), stratified: test holds round(test_fraction * count_c) random images of each class c.

    Both parts keep the original order of the images.
    """
    if not 0 <= test_fraction <= 1:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    test = []
    for c in torch.unique(data.labels).tolist():
        pool = torch.nonzero(data.labels == c).flatten()
        test.append(pool[torch.randperm(len(pool), generator=generator)[: round(test_fraction * len(pool))]])
    is_test = torch.zeros(len(data), dtype=torch.bool)
    is_test[torch.cat(test)] = True
    return data.subset(torch.nonzero(~is_test).flatten()), data.subset(torch.nonzero(is_test).flatten())


def class_pools(data: ImageSet, classes: list[int]) -> list[torch.Tensor]:
    """Per requested class, the indices of its images."""
    pools = [torch.nonzero(data.labels == c).flatten() for c in classes]
    for c, pool in zip(classes, pools):
        if len(pool) == 0:
            present = torch.unique(data.labels).tolist()
            raise ValueError(f"{data.name} has no images of class {c} (its classes: {present})")
    return pools


def largest_remainder(n: int, proportions: list[float]) -> list[int]:
    """Counts summing to n exactly: floor every n p_i, then one more for the largest fractional parts."""
    exact = [n * p / sum(proportions) for p in proportions]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def draw_imbalanced(data: ImageSet, classes: list[int], proportions: list[float], n: int,
                    generator: torch.Generator) -> ImageSet:
    """n images, count_c of class c drawn without replacement, in random order.

    counts = `largest_remainder(n, proportions)`.
    """
    if len(classes) != len(proportions):
        raise ValueError(f"{len(classes)} classes but {len(proportions)} proportions")
    if min(proportions) < 0 or abs(sum(proportions) - 1) > 1e-6:
        raise ValueError(f"proportions must be >= 0 and sum to 1, got {proportions} (sum {sum(proportions)})")
    chosen, counts = [], largest_remainder(n, proportions)
    for c, p, pool, count in zip(classes, proportions, class_pools(data, classes), counts):
        if len(pool) < count:
            raise ValueError(f"{data.name} has {len(pool)} images of class {c} but {count} are needed "
                             f"(n={n}, proportion {p}); use a smaller n (at most about {int(len(pool) / p)})")
        chosen.append(pool[torch.randperm(len(pool), generator=generator)[:count]])
    index = torch.cat(chosen)
    return data.subset(index[torch.randperm(len(index), generator=generator)])


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 in [0, 1]."""
    return images.to(torch.float32) / 255


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float in [0, 1] (clamped) -> uint8 round(x * 255)."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _checked(data: ImageSet) -> ImageSet:
    if data.images.shape[0] != len(data):
        raise ValueError(f"{data.name}: {data.images.shape[0]} images but {len(data)} labels")
    return data


def _require(name: str, folder: Path, files: list[list[str]], fix: str) -> list[Path]:
    """Per needed file, the first of its alternative names present in `folder`; downloads once if any is missing."""

    def locate() -> list[Path | None]:
        return [next((folder / a for a in alternatives if (folder / a).is_file()), None) for alternatives in files]

    found = locate()
    if None in found:
        reason = _download(name, folder)
        found = locate()
        if None in found:
            missing = ", ".join(" or ".join(alts) for alts, path in zip(files, found) if path is None)
            raise InputUnavailableError(f"{name}: missing {missing} in {folder} ({reason}); offline, {fix}")
    return found


def _download(name: str, folder: Path) -> str:
    """Try torchvision's download of the official files into `folder`; return what happened."""
    if os.environ.get("AUTOPHAGY_OFFLINE") == "1":
        return "download skipped: AUTOPHAGY_OFFLINE=1"
    from torchvision.datasets import MNIST
    from torchvision.datasets.utils import download_and_extract_archive

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        if name == "mnist":
            for file, md5 in MNIST.resources:
                download_and_extract_archive(MNIST_URL + file, folder, filename=file, md5=md5)
        else:
            url, md5 = CIFAR10_ARCHIVE
            download_and_extract_archive(url, folder, filename=url.rsplit("/", 1)[1], md5=md5)
    except Exception as error:  # offline, blocked, corrupt: all mean "put the files there yourself"
        detail = (str(error).splitlines() or [""])[0]
        return f"download failed: {type(error).__name__}: {detail}"
    finally:
        socket.setdefaulttimeout(previous)
    return "downloaded"


def _read_idx(path: Path, magic: int) -> torch.Tensor:
    """An IDX file of uint8 (torchvision's reader opens no .gz): big-endian magic, dims, then the data."""
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    found = struct.unpack(">i", data[:4])[0] if len(data) >= 4 else None
    if found != magic:
        raise ValueError(f"{path} is not an MNIST IDX file: magic number {found}, expected {magic}")
    ndim = magic & 0xFF
    shape = struct.unpack(f">{ndim}i", data[4 : 4 + 4 * ndim])
    body = data[4 + 4 * ndim :]
    if len(body) != math.prod(shape):
        raise ValueError(f"{path} has {len(body)} data bytes, expected {math.prod(shape)} for shape {shape}")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).view(shape)


def _read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) of one CIFAR-10 batch of the binary version."""
    data = path.read_bytes()
    if not data or len(data) % CIFAR10_RECORD:
        raise ValueError(f"{path} is not a CIFAR-10 binary batch: {len(data)} bytes, not a positive multiple "
                         f"of {CIFAR10_RECORD}")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, CIFAR10_RECORD)
    images = torch.from_numpy(records[:, 1:].reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(records[:, 0].astype(np.int64))


def with_channels(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) or (N, C, H, W) -> float (N, C, H, W) in [0, 1]."""
    x = to_float(images)
    return x[:, None] if x.dim() == 3 else x

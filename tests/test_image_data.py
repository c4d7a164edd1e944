"""Image data: tiny MNIST/CIFAR-10 files in the real formats, sklearn's digits, splits and imbalanced draws."""

from __future__ import annotations

import gzip
import importlib
import pickle
import socket
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.errors import InputUnavailableError
from tasks.studies.images import data as image_data
from tasks.studies.images.data import (ImageSet, class_pools, draw_imbalanced, load_images, split,
                              to_float, to_uint8)


def _write_idx(path: Path, array: np.ndarray, magic: int, gz: bool) -> None:
    """The IDX format: big-endian int32 magic (0x08 = uint8 in byte 3, ndim in byte 4), big-endian dims, data."""
    raw = struct.pack(">i", magic) + struct.pack(f">{array.ndim}i", *array.shape) + array.astype(np.uint8).tobytes()
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)


def _mnist_images(n: int, offset: int) -> np.ndarray:
    """Image i has pixel (y, x) = (offset + 7 i + 28 y + 3 x) mod 256: transposes and shifts show."""
    i, y, x = np.meshgrid(np.arange(n), np.arange(28), np.arange(28), indexing="ij")
    return ((offset + 7 * i + 28 * y + 3 * x) % 256).astype(np.uint8)


@pytest.fixture
def mnist_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "mnist"
    folder.mkdir()
    _write_idx(folder / "train-images-idx3-ubyte", _mnist_images(12, 0), 2051, gz=False)
    _write_idx(folder / "train-labels-idx1-ubyte", np.arange(12) % 10, 2049, gz=True)
    _write_idx(folder / "t10k-images-idx3-ubyte", _mnist_images(6, 100), 2051, gz=True)
    _write_idx(folder / "t10k-labels-idx1-ubyte", np.array([9, 8, 7, 0, 1, 2]), 2049, gz=False)
    return tmp_path


def test_mnist_reads_plain_and_gzipped_idx_files_exactly(mnist_dir: Path):
    train, test = load_images("mnist", mnist_dir), load_images("mnist", mnist_dir, train=False)
    assert train.name == "mnist" and len(train) == 12 and len(test) == 6
    assert train.images.shape == (12, 28, 28) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and test.images.shape == (6, 28, 28)
    assert torch.equal(train.images, torch.from_numpy(_mnist_images(12, 0)))
    assert torch.equal(test.images, torch.from_numpy(_mnist_images(6, 100)))
    assert train.labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert test.labels.tolist() == [9, 8, 7, 0, 1, 2]
    assert train.images[1, 2, 5] == 7 + 56 + 15  # image 1, row 2, column 5


def test_mnist_files_agree_with_torchvisions_reader(mnist_dir: Path):
    from torchvision.datasets.mnist import read_image_file

    reference = read_image_file(str(mnist_dir / "mnist" / "train-images-idx3-ubyte"))
    assert torch.equal(load_images("mnist", mnist_dir).images, reference)


def test_mnist_swapped_files_are_refused(mnist_dir: Path):
    folder = mnist_dir / "mnist"
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    (folder / "t10k-images-idx3-ubyte").write_bytes((folder / "t10k-labels-idx1-ubyte").read_bytes())
    with pytest.raises(ValueError, match="magic number 2049, expected 2051"):
        load_images("mnist", mnist_dir, train=False)


def _cifar_image(k: int) -> np.ndarray:
    """(3, 32, 32): red, green and blue planes with different values, rows differ from columns."""
    y, x = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    return np.stack([(k + y * 32 + x) % 50, 60 + (k + 2 * y + x) % 60, 130 + (k + y + 5 * x) % 120]).astype(np.uint8)


def _write_cifar_batch(path: Path, keys: list[int], labels: list[int]) -> None:
    """The binary version's layout: per image a label byte, then the 1024 red values, then green, then
    blue, each plane row by row."""
    rows = [np.concatenate([[label], *(_cifar_image(k)[c].ravel() for c in range(3))]) for k, label in zip(keys, labels)]
    path.write_bytes(np.stack(rows).astype(np.uint8).tobytes())


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for b in range(1, 6):
        _write_cifar_batch(folder / f"data_batch_{b}.bin", [10 * b, 10 * b + 1], [b, (b + 5) % 10])
    _write_cifar_batch(folder / "test_batch.bin", [90, 91, 92], [3, 1, 4])
    return tmp_path


def test_cifar10_reads_binary_batches_channels_first(cifar_dir: Path):
    train, test = load_images("cifar10", cifar_dir), load_images("cifar10", cifar_dir, train=False)
    assert train.images.shape == (10, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and train.name == "cifar10"
    keys = [10 * b + j for b in range(1, 6) for j in range(2)]  # the five batches in order
    assert torch.equal(train.images, torch.from_numpy(np.stack([_cifar_image(k) for k in keys])))
    assert train.labels.tolist() == [1, 6, 2, 7, 3, 8, 4, 9, 5, 0]
    assert torch.equal(test.images, torch.from_numpy(np.stack([_cifar_image(k) for k in (90, 91, 92)])))
    assert test.labels.tolist() == [3, 1, 4]
    red, green, blue = train.images[0, :, 1, 2].tolist()  # image key 10, row 1, column 2
    assert (red, green, blue) == (10 + 32 + 2, 60 + 10 + 2 + 2, 130 + 10 + 1 + 10)


class _Planted:
    """A pickle that, once loaded, writes a file: what a planted CIFAR-10 batch could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


def test_cifar10_never_unpickles_a_planted_python_batch(tmp_path: Path, monkeypatch):
    """Only the binary version is read: a python-version folder (pickles) is refused in one line, unread."""
    monkeypatch.setenv("AUTOPHAGY_OFFLINE", "1")
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    marker = tmp_path / "ran.txt"
    for name in [f"data_batch_{b}" for b in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(_Planted(marker)))
    with pytest.raises(InputUnavailableError, match="cifar-10-binary.tar.gz"):
        load_images("cifar10", tmp_path)
    assert not marker.exists()


def test_cifar10_batch_of_the_wrong_size_is_refused(cifar_dir: Path):
    (cifar_dir / "cifar10/cifar-10-batches-bin/test_batch.bin").write_bytes(b"\0" * 3074)
    with pytest.raises(ValueError, match="test_batch.bin is not a CIFAR-10 binary batch: 3074 bytes"):
        load_images("cifar10", cifar_dir, train=False)


@pytest.mark.parametrize("name, missing", [("mnist", "train-images-idx3-ubyte"), ("cifar10", "data_batch_1.bin")])
def test_missing_files_fail_fast_with_one_line(tmp_path: Path, monkeypatch, name: str, missing: str):
    monkeypatch.setenv("AUTOPHAGY_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(InputUnavailableError) as error:
        load_images(name, tmp_path)
    assert time.monotonic() - start < 30
    message = str(error.value)
    assert "\n" not in message and missing in message and str(tmp_path / name) in message
    assert "AUTOPHAGY_OFFLINE" in message


@pytest.mark.parametrize("mirror", ["closed_port", "real"])
def test_download_attempt_offline_fails_fast(tmp_path: Path, monkeypatch, mirror: str):
    """Without AUTOPHAGY_OFFLINE the torchvision download is tried and its failure is one line within seconds:
    from a mirror on this machine that refuses connections (a bound port that does not listen), and from the
    real mirror, which the suite's offline guard refuses whether or not this machine is online."""
    importlib.import_module("torchvision.datasets.utils")  # imported first: the time limit is the attempt's

    monkeypatch.delenv("AUTOPHAGY_OFFLINE", raising=False)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        if mirror == "closed_port":
            monkeypatch.setattr(image_data, "MNIST_URL", f"http://127.0.0.1:{closed.getsockname()[1]}/")
        start = time.monotonic()
        with pytest.raises(InputUnavailableError) as error:
            load_images("mnist", tmp_path, train=False)
    assert time.monotonic() - start < 5
    message = str(error.value)
    assert "\n" not in message and "t10k-images-idx3-ubyte" in message and "download failed: URLError" in message
    assert ("Connection refused" if mirror == "closed_port" else "the tests are offline") in message
    assert not list((tmp_path / "mnist").glob("*.gz"))


def test_digits_are_1797_uint8_images():
    digits = load_images("digits", Path("unused"))
    assert digits.images.shape == (1797, 8, 8) and digits.images.dtype == torch.uint8
    assert digits.images.max() == 255 and digits.images.min() == 0
    assert sorted(digits.labels.unique().tolist()) == list(range(10)) and digits.labels.dtype == torch.int64
    assert set(digits.images.unique().tolist()) == {round(v * 255 / 16) for v in range(17)}


def test_unknown_dataset_is_refused():
    with pytest.raises(ValueError, match="unknown image dataset 'svhn'"):
        load_images("svhn", Path("unused"))


@pytest.fixture
def tagged() -> ImageSet:
    """600 images whose two pixels spell their index; classes 3, 6, 1, 8 with 300, 200, 70, 30 images, mixed."""
    labels = torch.tensor([3] * 300 + [6] * 200 + [1] * 70 + [8] * 30)
    labels = labels[torch.randperm(600, generator=torch.Generator().manual_seed(1))]
    index = torch.arange(600)
    images = torch.stack([index // 256, index % 256], dim=1).reshape(600, 1, 2).to(torch.uint8)
    return ImageSet(images, labels, "tagged")


def _ids(data: ImageSet) -> torch.Tensor:
    return data.images[:, 0, 0].long() * 256 + data.images[:, 0, 1].long()


def test_split_is_stratified_disjoint_complete_and_deterministic(tagged: ImageSet):
    train, test = split(tagged, 0.25, torch.Generator().manual_seed(0))
    counts = {c: int((test.labels == c).sum()) for c in (3, 6, 1, 8)}
    assert counts == {3: 75, 6: 50, 1: 18, 8: 8}  # round(17.5) = 18, round(7.5) = 8
    train_ids, test_ids = _ids(train), _ids(test)
    assert len(set(train_ids.tolist()) & set(test_ids.tolist())) == 0
    assert sorted(train_ids.tolist() + test_ids.tolist()) == list(range(600))
    assert torch.equal(train.labels, tagged.labels[train_ids]) and torch.equal(test.labels, tagged.labels[test_ids])
    again = split(tagged, 0.25, torch.Generator().manual_seed(0))[1]
    other = split(tagged, 0.25, torch.Generator().manual_seed(1))[1]
    assert torch.equal(_ids(again), test_ids) and not torch.equal(_ids(other), test_ids)


def test_class_pools_name_a_missing_class(tagged: ImageSet):
    pools = class_pools(tagged, [8, 1])
    assert [len(p) for p in pools] == [30, 70] and (tagged.labels[pools[0]] == 8).all()
    with pytest.raises(ValueError, match="tagged has no images of class 5"):
        class_pools(tagged, [3, 5])


def test_draw_imbalanced_has_exact_counts_without_duplicates(tagged: ImageSet):
    drawn = draw_imbalanced(tagged, [3, 6], [0.9, 0.1], 100, torch.Generator().manual_seed(0))
    assert len(drawn) == 100 and int((drawn.labels == 3).sum()) == 90 and int((drawn.labels == 6).sum()) == 10
    ids = _ids(drawn)
    assert len(set(ids.tolist())) == 100 and torch.equal(drawn.labels, tagged.labels[ids])
    assert not torch.equal(drawn.labels, drawn.labels.sort(descending=False).values)  # shuffled, not grouped
    again = draw_imbalanced(tagged, [3, 6], [0.9, 0.1], 100, torch.Generator().manual_seed(0))
    assert torch.equal(_ids(again), ids)


def test_draw_imbalanced_rounds_by_largest_remainder(tagged: ImageSet):
    drawn = draw_imbalanced(tagged, [3, 6, 1], [0.5, 0.3, 0.2], 7, torch.Generator().manual_seed(0))
    assert [int((drawn.labels == c).sum()) for c in (3, 6, 1)] == [4, 2, 1]  # 3.5, 2.1, 1.4
    thirds = draw_imbalanced(tagged, [3, 6, 1], [1 / 3, 1 / 3, 1 / 3], 100, torch.Generator().manual_seed(0))
    assert [int((thirds.labels == c).sum()) for c in (3, 6, 1)] == [34, 33, 33]


def test_draw_imbalanced_refuses_impossible_requests(tagged: ImageSet):
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="tagged has 30 images of class 8 but 50 are needed.*smaller n"):
        draw_imbalanced(tagged, [3, 8], [0.5, 0.5], 100, generator)
    with pytest.raises(ValueError, match="sum to 1"):
        draw_imbalanced(tagged, [3, 6], [0.9, 0.2], 100, generator)
    with pytest.raises(ValueError, match="2 classes but 3 proportions"):
        draw_imbalanced(tagged, [3, 6], [0.5, 0.3, 0.2], 100, generator)


def test_float_round_trip_is_exact():
    values = torch.arange(256, dtype=torch.int64).to(torch.uint8)
    x = to_float(values)
    assert x.dtype == torch.float32 and x.min() == 0 and x.max() == 1
    assert torch.equal(to_uint8(x), values)
    assert to_uint8(torch.tensor([-0.5, 1.5, 0.5])).tolist() == [0, 255, 128]

"""Inception FID: our in-memory extraction against pytorch-fid's own pipeline, measured in one run.

1. Throughput (images/s, end to end: model built, features of both sets, Frechet distance) of
   `tasks.studies.images.fid` (uint8 tensors scaled batch by batch, pool3 features, float64 statistics) against
   pytorch-fid's `calculate_fid_given_paths` on the same images saved as PNG files, and the two FID
   values, which must agree.
2. For context, the throughput of the reference classifier's features (`fid_classifier`).

Images: sklearn's 8x8 digits, grey, two disjoint sets of n. Offline there are no real Inception
weights: a random FID Inception's weights go under pytorch-fid's file name into a temporary
TORCH_HOME, so both pipelines load the same file without network.

    python benchmarks/fid_features.py [--n 64 --batch-size 32]
"""

from __future__ import annotations

import os
import tempfile

TORCH_HOME = tempfile.mkdtemp(prefix="fid_bench_")
os.environ["TORCH_HOME"] = TORCH_HOME  # before torch reads it

import argparse  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from pytorch_fid.fid_score import calculate_fid_given_paths  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.classifier import Classifier  # noqa: E402
from tasks.studies.images.fid import classifier_extractor, extract_features, frechet_distance  # noqa: E402
from tasks.studies.images.inception import fid_inception, inception_extractor, inception_weights_path  # noqa: E402


def digits() -> torch.Tensor:
    """The 1797 digits as uint8 (N, 8, 8) in 0..255."""
    return torch.from_numpy(np.round(load_digits().images * 255 / 16).astype(np.uint8))


def write_pngs(images: torch.Tensor, folder: Path) -> Path:
    folder.mkdir()
    for i, image in enumerate(images.numpy()):
        Image.fromarray(image, mode="L").save(folder / f"{i:05d}.png")
    return folder


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="images per set (two sets)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    images = digits()
    a, b = images[:args.n], images[args.n:2 * args.n]
    torch.manual_seed(0)
    inception_weights_path().parent.mkdir(parents=True)
    torch.save(fid_inception().state_dict(), inception_weights_path())
    folder = Path(TORCH_HOME)
    dirs = [write_pngs(a, folder / "a"), write_pngs(b, folder / "b")]
    extract_features(inception_extractor(device=device), a[:2], device=device)  # warm-up: threads, kernels

    def ours() -> tuple[float, float]:
        extractor = inception_extractor(device=device)
        features = [extract_features(extractor, x, args.batch_size, device) for x in (a, b)]
        return timed(lambda: frechet_distance(*features))

    (fid_ours, t_distance), t_ours = timed(ours)
    fid_theirs, t_theirs = timed(lambda: calculate_fid_given_paths([str(d) for d in dirs], args.batch_size,
                                                                   device, 2048, num_workers=0))
    torch.manual_seed(0)
    classifier = classifier_extractor(Classifier(1, 10), device)
    many = images.repeat(10, 1, 1)
    _, t_classifier = timed(lambda: extract_features(classifier, many, device=device))

    total = 2 * args.n
    print(f"Inception FID (random FID-Inception weights), 2 x {args.n} sklearn digits 8x8 grey, batch "
          f"{args.batch_size}, {device}, {torch.get_num_threads()} threads; end to end incl. model load")
    print(f"  {'pipeline':<44}{'seconds':>9}{'images/s':>10}{'FID':>14}")
    print(f"  {'tasks...fid: uint8 -> pool3 -> FD':<44}{t_ours:9.1f}{total / t_ours:10.1f}{fid_ours:14.10g}")
    print(f"  {'pytorch-fid: calculate_fid_given_paths(PNG)':<44}{t_theirs:9.1f}{total / t_theirs:10.1f}"
          f"{fid_theirs:14.10g}")
    print(f"  speed ratio ours / pytorch-fid: {t_theirs / t_ours:.2f}; FID relative difference: "
          f"{abs(fid_ours - fid_theirs) / abs(fid_theirs):.1e}; of our {t_ours:.1f} s, {t_distance:.1f} s is the "
          f"Frechet distance (sqrtm of a 2048 x 2048 matrix)")
    print(f"Classifier features (fid_classifier), {len(many)} digits, batch 256: {t_classifier:.2f} s, "
          f"{len(many) / t_classifier:,.0f} images/s ({len(many) / t_classifier / (total / t_ours):,.0f} x Inception)")


if __name__ == "__main__":
    try:
        main()
    finally:
        shutil.rmtree(TORCH_HOME, ignore_errors=True)

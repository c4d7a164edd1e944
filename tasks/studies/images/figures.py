"""Figures of an image study: sample grids per method and generation, and the metric curves."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from tasks.infra import storage
from tasks.outputs.figures import plot_curves, save
from tasks.infra.paths import StudyPaths

CURVES = ["fid_classifier", "minority_ratio", "share_other", "data_loss", "response"]
DIVERSITY = ["precision", "recall", "density", "coverage", "minority_coverage", "vendi"]


def tile(images: torch.Tensor, columns: int) -> np.ndarray:
    """uint8 images (n, H, W) or (n, C, H, W) -> one (rows H, columns W[, C]) mosaic, 1-pixel gaps."""
    x = images if images.dim() == 4 else images[:, None]
    n, c, h, w = x.shape
    rows = -(-n // columns)
    canvas = np.full((c, rows * (h + 1) - 1, columns * (w + 1) - 1), 255, dtype=np.uint8)
    for i, image in enumerate(x.numpy()):
        r, q = divmod(i, columns)
        canvas[:, r * (h + 1): r * (h + 1) + h, q * (w + 1): q * (w + 1) + w] = image
    return canvas[0] if c == 1 else canvas.transpose(1, 2, 0)


def show(ax, mosaic: np.ndarray, title: str) -> None:
    ax.imshow(mosaic, cmap="gray" if mosaic.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def generation_images(paths: StudyPaths, method: str, generation: int, count: int) -> torch.Tensor:
    """The first `count` images of seed 0 of D_g (its synthetic part after generation 0)."""
    data = storage.read_dataset(storage.dataset_path(paths.method_dir(method), generation))
    images = data.values[0]
    return (images if generation == 0 else images[~data.is_real])[:count]


def sample_grids(paths: StudyPaths, methods: list[str], generations: int, count: int = 64) -> list[Path]:
    """One PNG per method and generation: samples/<method>_gen_<g>.png, g zero-padded to 3 digits (D_g, seed 0)."""
    out = []
    for method in methods:
        for g in range(generations):
            fig, ax = plt.subplots(figsize=(4, 4))
            what = "real D_0" if g == 0 else f"D_{g}: samples of generation {g - 1}"
            show(ax, tile(generation_images(paths, method, g, count), 8), f"{paths.experiment} {method}: {what}")
            out.append(save(fig, paths.figures / "samples" / f"{method}_gen_{g:03d}.png"))
    return out


def generations_grid(paths: StudyPaths, methods: list[str], generations: int,
                     images_of: Callable[[str, int], torch.Tensor], columns: int, cell: tuple[float, float],
                     note: str = "") -> Path:
    """samples_by_generation.png: rows methods, columns generations, each cell `images_of(method, g)`
    tiled `columns` wide in a cell of `cell` inches."""
    fig, axes = plt.subplots(len(methods), generations, figsize=(cell[0] * generations, cell[1] * len(methods)),
                             squeeze=False)
    for row, method in zip(axes, methods):
        for g, ax in enumerate(row):
            show(ax, tile(images_of(method, g), columns), f"{method} D_{g}")
    fig.suptitle(f"{paths.experiment}: D_0 real, D_g sampled from generation g-1 (seed 0){note}", fontsize=9)
    return save(fig, paths.figures / "samples_by_generation.png")


def side_by_side(paths: StudyPaths, methods: list[str], generations: int, count: int = 16) -> Path:
    """Each cell the first `count` images of D_g (seed 0)."""
    return generations_grid(paths, methods, generations, lambda method, g: generation_images(paths, method, g, count),
                            4, (1.8, 1.9))


def fid_by_generation(curve_table: pd.DataFrame, paths: StudyPaths, title: str) -> Path:
    """fid.png, the PLE paper's Fig. 2: fid_classifier (and fid_inception when measured) against generation
    per method, beside the hypernetwork methods' estimator response."""
    metrics = [m for m in ("fid_classifier", "fid_inception", "response") if f"{m}_mean" in curve_table]
    return plot_curves(curve_table, metrics, paths.figures / "fid.png", title)


def curves(curve_table: pd.DataFrame, paths: StudyPaths, title: str) -> Path:
    """FID, minority ratio (fair = 1), off-class share and the fit loss on D_g against generation."""
    metrics = [m for m in CURVES + ["fid_inception"] if f"{m}_mean" in curve_table]
    generations = sorted(curve_table["generation"].unique())
    fair = pd.Series(1.0, index=generations, name="fair (1)")
    return plot_curves(curve_table, metrics, paths.figures / "curves.png", title, {"minority_ratio": fair})


def diversity(curve_table: pd.DataFrame, paths: StudyPaths, title: str) -> Path:
    """diversity.png: the k-NN metrics in classifier feature space (precision, recall, density beside its
    expectation 1 for samples drawn like the real data, coverage, the minority's coverage) and the Vendi score."""
    metrics = [m for m in DIVERSITY if f"{m}_mean" in curve_table]
    generations = sorted(curve_table["generation"].unique())
    real = pd.Series(1.0, index=generations, name="real data (E = 1)")
    return plot_curves(curve_table, metrics, paths.figures / "diversity.png", title, {"density": real})

"""Images with a binary target y and a binary protected attribute s rendered into them (AIM-Fair's setting).

y = 1 when the image's class is >= `threshold` (digits: 5..9 against 0..4). s = 1 draws the image in
inverted contrast, 255 - x: a visible style any image can take, so the attribute is exactly known
for real images and can be read back from generated ones (`attribute_of`).

A biased training draw of n images has the four (y, s) groups in proportions
(bias, 1 - bias, 1 - bias, bias) / 2 for (0, 0), (0, 1), (1, 0), (1, 1): with bias = 0.9 the group
counts are 9:1:1:9 and s agrees with y 90% of the time (AIM-Fair: 9000/1000/9000/1000 on CelebA).
The balanced test set shows every held-out image in both styles, with as many y = 0 as y = 1
images, so every group has the same size and the groups differ only by the rendering.

Rows: a generator sees an image and its target as one flat uint8 row (pixels..., y), never s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tasks.studies.images.data import ImageSet, largest_remainder

ATTRIBUTES = {"invert": "inverted contrast (255 - x)"}  # the renderings of s = 1


@dataclass(frozen=True)
class Groups:
    """Images uint8 (N, H, W) with their target y (N,) and attribute s (N,), both int64 0/1."""

    images: torch.Tensor
    y: torch.Tensor
    s: torch.Tensor


def render(images: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Images with s = 1 drawn in inverted contrast."""
    return torch.where(s.bool().view(-1, *[1] * (images.dim() - 1)), 255 - images, images)


def attribute_of(images: torch.Tensor) -> torch.Tensor:
    """s read back from uint8 images (N, ...): 1 when the mean intensity exceeds mid-grey.

    Exact on real digits: normal digits have mean intensity 46..108 of 255, inverted ones 147..209."""
    return (images.reshape(len(images), -1).double().mean(1) > 127.5).long()


def targets(data: ImageSet, threshold: int) -> torch.Tensor:
    return (data.labels >= threshold).long()


def group_counts(n: int, bias: float) -> list[int]:
    """Counts of the groups (0, 0), (0, 1), (1, 0), (1, 1) in a biased draw of n, summing to n: first
    half the draw per y, then a share `bias` of each half with s = y (largest remainders both times)."""
    n0, n1 = largest_remainder(n, [0.5, 0.5])
    return largest_remainder(n0, [bias, 1 - bias]) + largest_remainder(n1, [1 - bias, bias])


def draw_biased(data: ImageSet, threshold: int, bias: float, n: int, generator: torch.Generator) -> Groups:
    """n images in random order, the four groups at `group_counts`, drawn without replacement."""
    y_all = targets(data, threshold)
    counts = group_counts(n, bias)
    index, y, s = [], [], []
    for target in (0, 1):
        pool = torch.nonzero(y_all == target).flatten()
        first, second = counts[2 * target], counts[2 * target + 1]
        if len(pool) < first + second:
            raise ValueError(f"{data.name} has {len(pool)} images with y={target} (class >= {threshold}: "
                             f"{bool(target)}) but a draw of n={n} at bias {bias} needs {first + second}; "
                             f"use a smaller n_samples")
        index.append(pool[torch.randperm(len(pool), generator=generator)[: first + second]])
        y += [target] * (first + second)
        s += [0] * first + [1] * second
    order = torch.randperm(n, generator=generator)
    chosen, y, s = torch.cat(index)[order], torch.tensor(y)[order], torch.tensor(s)[order]
    return Groups(render(data.images[chosen], s), y, s)


def balanced_test(data: ImageSet, threshold: int, generator: torch.Generator) -> Groups:
    """Every held-out image of the smaller y class and as many random ones of the other, each in both styles."""
    y_all = targets(data, threshold)
    pools = [torch.nonzero(y_all == target).flatten() for target in (0, 1)]
    size = min(len(pool) for pool in pools)
    if size == 0:
        raise ValueError(f"the held-out {data.name} images hold only one target class at threshold {threshold}")
    chosen = torch.cat([pool[torch.randperm(len(pool), generator=generator)[:size]].sort().values for pool in pools])
    images = data.images[chosen]
    s = torch.cat([torch.zeros(len(chosen), dtype=torch.long), torch.ones(len(chosen), dtype=torch.long)])
    return Groups(render(torch.cat([images, images]), s), torch.cat([y_all[chosen]] * 2), s)


def to_rows(groups: Groups) -> torch.Tensor:
    """uint8 rows (N, pixels + 1): the flattened image, then y."""
    return torch.cat([groups.images.reshape(len(groups.y), -1), groups.y[:, None].to(torch.uint8)], dim=1)


def split_rows(rows: torch.Tensor, image_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (..., *image_shape) uint8, y (...) int64) of rows (..., pixels + 1)."""
    return rows[..., :-1].reshape(*rows.shape[:-1], *image_shape), rows[..., -1].long()


def rows_to_float(rows: torch.Tensor) -> torch.Tensor:
    """The generator's view: pixels / 255 in [0, 1], y kept as 0.0 / 1.0."""
    x = rows.to(torch.float32)
    return torch.cat([x[..., :-1] / 255, x[..., -1:]], dim=-1)


def rows_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Generated float rows back to stored uint8 rows: pixels round(255 p) clamped, y as is."""
    pixels = (x[..., :-1].clamp(0, 1) * 255).round()
    return torch.cat([pixels, x[..., -1:].round()], dim=-1).to(torch.uint8)


def group_shares(rows: torch.Tensor, image_shape: tuple[int, ...]) -> torch.Tensor:
    """Share of each (y, s) group, s read by `attribute_of`, for rows (S, N, pixels + 1): (S, 4)."""
    images, y = split_rows(rows, image_shape)
    s = attribute_of(images.reshape(-1, *image_shape)).view(y.shape)
    return torch.nn.functional.one_hot(2 * y + s, 4).double().mean(1)

"""Fidelity, diversity and coverage of samples in a feature space, on feature matrices (N, D), in float64.

k-NN balls of points x_1..x_N: B_i = {y : ||y - x_i|| <= r_i}, r_i the distance from x_i to its k-th
nearest neighbour among the other points (closed balls, as in Kynkaanniemi et al. 2019). With real
features x_1..x_N, their balls, and fake features y_1..y_M:

    density  = 1 / (k M) sum_j #{i : y_j in B_i}           (Naeem et al. 2020; E = 1 when fake ~ real)
    coverage = 1 / N #{i : some y_j in B_i}                 (Naeem et al. 2020; in [0, 1])

Coverage over a subset of the real points (a class) is the share of their balls, with the radii of the
whole real set, that hold a fake point. The reference implementation `prdc` (Naeem et al.'s) uses open
balls (<); the two differ only when a distance equals a radius exactly.

Vendi score (Friedman & Dieng 2023) of points x_1..x_n with the cosine-similarity kernel
K_ij = <x_i, x_j> / (||x_i|| ||x_j||) (positive semi-definite, K_ii = 1):

    VS = exp(-sum_i l_i log l_i),  l_i the eigenvalues of K / n   (0 log 0 = 0),

the effective number of distinct points: 1 for n copies of one point, n for n orthogonal points, at most
the rank of the features (<= D).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

CDIST_ELEMENTS = 2**23  # distances held at once (64 MB in float64)


def as_features(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A feature matrix as a float64 tensor."""
    return torch.as_tensor(x, dtype=torch.float64)


def distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (N, M) computed coordinate by coordinate: d(a_i, b_j) = d(b_j, a_i) to the last bit
    and the same in every chunk, so a point at its ball's radius counts as inside (torch.cdist's default
    matrix-product path rounds differently by operand order)."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


class KNNBalls:
    """The k-NN balls of points (N, D): centres the points, radii their distances to the k-th nearest other point."""

    def __init__(self, points: np.ndarray | torch.Tensor, k: int):
        self.centres, self.k = as_features(points), k
        n = len(self.centres)
        if not 0 < k < n:
            raise ValueError(f"k-NN balls need 0 < k < number of samples, got k={k} for {n} samples")
        rows = max(1, CDIST_ELEMENTS // n)
        self.radii = torch.cat([distances(q, self.centres).kthvalue(k + 1, dim=1).values
                                for q in self.centres.split(rows)])

    def _inside(self, queries: torch.Tensor) -> Iterator[torch.Tensor]:
        """Blocks (rows of queries, N) of ||q - x_i|| <= r_i, a chunk of queries at a time."""
        rows = max(1, CDIST_ELEMENTS // len(self.centres))
        for q in as_features(queries).split(rows):
            yield distances(q, self.centres) <= self.radii

    def share_inside(self, queries: np.ndarray | torch.Tensor) -> float:
        """Share of the queries inside some ball: precision of queries against the centres (recall with the
        roles swapped)."""
        return float(torch.cat([block.any(dim=1) for block in self._inside(queries)]).double().mean())

    def density(self, fake: np.ndarray | torch.Tensor) -> float:
        """1 / (k M) sum_j #{i : y_j in B_i} over the M fake points."""
        return float(sum(int(block.sum()) for block in self._inside(fake))) / (self.k * len(fake))

    def coverage(self, fake: np.ndarray | torch.Tensor, among: torch.Tensor | None = None) -> float:
        """Share of the balls holding some fake point; `among` (N,) bool restricts it to those balls."""
        reached = torch.zeros(len(self.centres), dtype=torch.bool)
        for block in self._inside(fake):
            reached |= block.any(dim=0)
        return float((reached if among is None else reached[among]).double().mean())


def vendi_score(features: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Vendi score with the cosine kernel of features (..., n, D), batched over leading dimensions.

    K / n = X X^T / n (X: rows scaled to norm 1) shares its nonzero eigenvalues with X^T X / n; the
    smaller of the two is decomposed. Rows of norm 0 have no cosine similarity: a ValueError."""
    x = as_features(features)
    norms = x.norm(dim=-1, keepdim=True)
    if (norms == 0).any():
        raise ValueError("vendi_score needs nonzero feature rows: a zero row has no cosine similarity")
    x = x / norms
    n, d = x.shape[-2:]
    gram = x.mT @ x if d < n else x @ x.mT
    eigenvalues = torch.linalg.eigvalsh(gram / n).clamp_min(0.0)
    return torch.special.entr(eigenvalues).sum(-1).exp()

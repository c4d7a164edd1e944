"""The self-consuming loop, independent of any model (docs/loop.md).

Generation 0 fits the real dataset D_0. Generation g >= 1 fits D_g, built from the n_synth
samples S_g of model g-1:

    replace               D_g = S_g
    accumulate            D_g = D_(g-1) + S_g
    accumulate_subsample  A_g = A_(g-1) + S_g (A_0 = D_0), D_g = n points of A_g drawn uniformly
    augment               D_g = (a random subset of n_real points of D_0) + S_g
    fresh                 D_g = (a new real draw of n_real points) + S_g

with n_real = round(real_fraction * n), or `real_points` when given as an amount. Under
accumulate_subsample the stored datasets are the pools A_g. Before S_g enters D_g, a verifier may
curate it (`tasks.curation`). A study plugs in by implementing `Study`; every study gets every mode,
curation when it can verify, and the sampling bias for free. Randomness comes from generators keyed by (seed, purpose, ...), so a generation
recomputed after a crash draws exactly the numbers it drew the first time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class Dataset:
    """One generation's data for all seeds: values (S, N, *event), is_real (N,) shared by the seeds."""

    values: torch.Tensor
    is_real: torch.Tensor

    def __len__(self) -> int:
        return self.values.shape[1]


@dataclass(frozen=True)
class GridPoint:
    """A point of a study's grid, e.g. {"weight": 0.95, "n_samples": 50}; empty for a study without a grid.

    Its coordinates become columns of the tables, tags of the MLflow runs and, through `name`, folders."""

    coordinates: dict[str, object] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """'weight=0.95,n_samples=50'; '' without a grid."""
        return ",".join(f"{key}={value}" for key, value in self.coordinates.items())

    @property
    def keys(self) -> list[str]:
        return list(self.coordinates)


@runtime_checkable
class Study(Protocol):
    """What the loop needs from an experiment. Every tensor has the seed axis first."""

    experiment: str
    seeds: int
    n_samples: int
    generations: int
    event_size: int  # values per data point
    point: GridPoint
    labels: dict[str, object]  # further constant columns of the tidy table
    methods: tuple[str, ...] | None  # the methods run at this point; None: the study's params decide
    config: dict  # everything the stored generations depend on (part of their fingerprint)

    def draw_real(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(seeds, n, *event) fresh draws from the true data distribution."""

    def fit(self, data: Dataset, method: str, generator: torch.Generator) -> Any:
        """Fit one model per seed to `data` with `method`."""

    def training_curves(self, model: Any) -> dict[str, list[float]]:
        """Per-step curves of the fit that made `model` (e.g. {"fit": [...], "penalty": [...]}); {} if none."""

    def sample(self, model: Any, n: int, sampling_bias: float, generator: torch.Generator) -> torch.Tensor:
        """(seeds, n, *event) samples of the fitted model, latent/variance scaled by sampling_bias."""

    def evaluate(self, model: Any, data: Dataset) -> dict[str, torch.Tensor]:
        """Metric name -> (seeds,) values of the fitted model."""


def generator(seed: int, *keys: object) -> torch.Generator:
    """A torch generator seeded from the global seed and the keys (e.g. 'sample', method, g)."""
    digest = hashlib.sha256(repr((seed, *keys)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def split_counts(mode: str, n: int, real_fraction: float, real_points: int | None = None) -> tuple[int, int]:
    """(real, synthetic) point counts of a later generation's new contribution: a proportion of n
    (round(real_fraction * n) real, the rest synthetic), or an amount (real_points real beside n synthetic)."""
    if mode not in ("augment", "fresh"):
        return 0, n
    if real_points is not None:
        return real_points, n
    n_real = round(real_fraction * n)
    return n_real, n - n_real


def training_data(mode: str, stored: Dataset, n: int, rng: torch.Generator) -> Dataset:
    """What model g fits: the stored D_g, or under accumulate_subsample n points of the stored pool A_g
    drawn uniformly without replacement (kept in their stored order)."""
    return subset(stored, n, rng) if mode == "accumulate_subsample" else stored


def subset(data: Dataset, n: int, rng: torch.Generator) -> Dataset:
    """n points of `data` drawn uniformly without replacement, in their order in `data`."""
    keep = torch.randperm(len(data), generator=rng)[:n].sort().values
    return Dataset(data.values[:, keep], data.is_real[keep])


def real_dataset(values: torch.Tensor) -> Dataset:
    return Dataset(values, torch.ones(values.shape[1], dtype=torch.bool))


def synthetic_dataset(values: torch.Tensor) -> Dataset:
    return Dataset(values, torch.zeros(values.shape[1], dtype=torch.bool))


def concat(*parts: Dataset) -> Dataset:
    return Dataset(torch.cat([p.values for p in parts], dim=1), torch.cat([p.is_real for p in parts]))


def real_part(
    mode: str, real0: Dataset, n_real: int, draw_real: Callable[[int], torch.Tensor], rng: torch.Generator
) -> Dataset | None:
    """The real points of a later generation: a random subset of D_0 (augment), a new draw (fresh)."""
    if mode == "augment":
        return subset(real0, n_real, rng)
    if mode == "fresh":
        return real_dataset(draw_real(n_real))
    return None


def next_dataset(mode: str, previous: Dataset, real: Dataset | None, synthetic: torch.Tensor) -> Dataset:
    """The stored dataset of generation g from generation g-1's, the real part of `real_part` and the
    synthetic samples S_g (under accumulate_subsample the stored datasets are the pools A_g)."""
    samples = synthetic_dataset(synthetic)
    if mode == "replace":
        return samples
    if mode in ("accumulate", "accumulate_subsample"):
        return concat(previous, samples)
    if mode in ("augment", "fresh"):
        return concat(real, samples)
    raise ValueError(f"unknown loop mode {mode!r}; use replace, accumulate, accumulate_subsample, augment or fresh")

"""Estimator response: does a fitted hypernetwork H follow its data the way MLE does? (docs/metrics.md)

A study with hypernetwork methods supplies probe datasets X'_1..X'_K whose value v_k of a statistic
MLE identifies is set by design (a component mean, a minority share, a scale), and reads the same
statistic T from an estimate. For each seed,

    slope      = least-squares slope of T(H(X'_k)) on v_k           (H applied to the probes, not retrained)
    slope_mle  = the same for a fresh MLE fit on every probe        (once per study: its probes are fixed)
    response   = slope / mean over seeds of slope_mle               (1: follows the data as MLE does; 0: ignores it)

A hypernetwork result whose mean response is below `DEGENERATE_BELOW` is degenerate: H ignores its
data, and whatever it shows about PLE is not a finding about PLE.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from models.ple import Fitted
from tasks.loop import generator, real_dataset

DEGENERATE_BELOW = 0.2


def probe_generator(*keys: object) -> torch.Generator:
    """Probes are fixed: the same datasets for every method and generation, whatever the global seed."""
    return generator(0, "probe", *keys)


@dataclass(frozen=True)
class Probes:
    """Probe datasets (each (S, n, *event), stored form) and the statistic's value each was built with."""

    statistic: str
    values: tuple[float, ...]
    datasets: tuple[torch.Tensor, ...]


def slope(values: tuple[float, ...], statistics: torch.Tensor) -> torch.Tensor:
    """Per seed, the least-squares slope of statistics (K, S) on values (K,): (S,)."""
    v = torch.tensor(values, dtype=torch.float64)
    v = v - v.mean()
    t = statistics.double() - statistics.double().mean(0)
    return (v[:, None] * t).sum(0) / v.pow(2).sum()


def degenerate(mean_response: float) -> bool:
    return mean_response < DEGENERATE_BELOW


class Responsive:
    """Mixin of a study with hypernetwork methods: its probes, its statistic, and the response metrics.

    The study's own `fit(data, method, generator)` makes the MLE reference."""

    @abstractmethod
    def probes(self) -> Probes:
        """The probe datasets, drawn with `probe_generator(...)`."""

    @abstractmethod
    def statistic(self, estimate: Any) -> torch.Tensor:
        """T of every seed's estimate (as `fit` returns it): (S,)."""

    def readout(self, weights: dict[str, torch.Tensor]) -> Any:
        """An estimate from the raw weights H emits (identity for neural generators)."""
        return weights

    def hyper_input(self, values: torch.Tensor) -> torch.Tensor:
        """Stored data as the hypernetwork reads it."""
        return values.float()

    @cached_property
    def probe_set(self) -> Probes:
        return self.probes()

    @cached_property
    def mle_slope(self) -> torch.Tensor:
        """Per seed, the slope of a fresh MLE fit on the probes."""
        probes = self.probe_set
        fits = [self.fit(real_dataset(x), "mle", probe_generator("mle", k)).estimate
                for k, x in enumerate(probes.datasets)]
        return slope(probes.values, torch.stack([self.statistic(f) for f in fits]))

    def response_metrics(self, model: Fitted) -> dict[str, torch.Tensor]:
        """Per seed for a hypernetwork fit: response, response_slope and the reference response_slope_mle;
        {} for a model without a hypernetwork."""
        if model.ensemble is None:
            return {}
        probes = self.probe_set
        estimates = [self.readout(model.ensemble.weights(self.hyper_input(x))) for x in probes.datasets]
        own = slope(probes.values, torch.stack([self.statistic(e) for e in estimates]))
        return {"response": own / self.mle_slope.mean(), "response_slope": own, "response_slope_mle": self.mle_slope}

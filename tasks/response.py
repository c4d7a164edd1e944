"""Estimator response: does a fitted hypernetwork H follow its data the way MLE does? (docs/metrics.md)

A study with hypernetwork methods supplies probe datasets X'_1..X'_K and, for each statistic T it
reads from an estimate (a component mean, a minority share, a scale), the value v_k that T has in
the distribution X'_k was drawn from. For each statistic and seed,

    slope      = least-squares slope of T(H(X'_k)) on v_k           (H applied to the probes, not retrained)
    slope_mle  = the same for a fresh MLE fit on every probe        (once per study: its probes are fixed)
    response   = slope / mean over seeds of slope_mle               (1: follows the data as MLE does; 0: ignores it)

A statistic is identified when MLE's mean slope is beyond Z standard errors above 0; an unidentified
statistic has no response (NaN): nothing can be measured relative to a reference that does not move.
The headline `response` is that of the identified statistic with the lowest mean response (the
study's first statistic when none is identified). A hypernetwork result whose mean response is below
`DEGENERATE_BELOW` is degenerate: H ignores its data, and whatever it shows about PLE is not a
finding about PLE.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from models.ple import Fitted
from tasks.loop import generator, real_dataset

DEGENERATE_BELOW = 0.2
Z = 2.0  # standard errors: the bar of identification and of the claims' verdicts


def probe_generator(*keys: object) -> torch.Generator:
    """Probes are fixed: the same datasets for every method and generation, whatever the global seed."""
    return generator(0, "probe", *keys)


@dataclass(frozen=True)
class Probes:
    """Probe datasets (each (S, n, *event), stored form) and, per statistic, its value in each of them."""

    values: dict[str, tuple[float, ...]]
    datasets: tuple[torch.Tensor, ...]


def slope(values: tuple[float, ...], statistics: torch.Tensor) -> torch.Tensor:
    """Per seed, the least-squares slope of statistics (K, S) on values (K,): (S,)."""
    v = torch.tensor(values, dtype=torch.float64)
    v = v - v.mean()
    t = statistics.double() - statistics.double().mean(0)
    return (v[:, None] * t).sum(0) / v.pow(2).sum()


def identified(mean: float, se: float) -> bool:
    """MLE's slope is beyond Z standard errors above 0 (above 0 when there is no standard error)."""
    return mean > (0.0 if math.isnan(se) else Z * se)


def degenerate(mean_response: float) -> bool:
    return mean_response < DEGENERATE_BELOW


class Responsive:
    """Mixin of a study with hypernetwork methods: its probes, its statistics, and the response metrics.

    The study's own `fit(data, method, generator)` makes the MLE reference."""

    @abstractmethod
    def probes(self) -> Probes:
        """The probe datasets, drawn with `probe_generator(...)`."""

    @abstractmethod
    def statistics(self, estimate: Any) -> dict[str, torch.Tensor]:
        """Every statistic of `Probes.values`, of every seed's estimate (as `fit` returns it): (S,) each."""

    def readout(self, weights: dict[str, torch.Tensor]) -> Any:
        """An estimate from the raw weights H emits (identity for neural generators)."""
        return weights

    def hyper_input(self, values: torch.Tensor) -> torch.Tensor:
        """Stored data as the hypernetwork reads it."""
        return values.float()

    @cached_property
    def probe_set(self) -> Probes:
        return self.probes()

    def slopes(self, estimates: list[Any]) -> dict[str, torch.Tensor]:
        """Per statistic, the per-seed slopes of the estimates (one per probe dataset)."""
        read = [self.statistics(e) for e in estimates]
        return {name: slope(values, torch.stack([r[name] for r in read])) for name, values in self.probe_set.values.items()}

    @cached_property
    def mle_slopes(self) -> dict[str, torch.Tensor]:
        """Per statistic and seed, the slope of a fresh MLE fit on the probes."""
        return self.slopes([self.fit(real_dataset(x), "mle", probe_generator("mle", k)).estimate
                            for k, x in enumerate(self.probe_set.datasets)])

    def response_metrics(self, model: Fitted) -> dict[str, torch.Tensor]:
        """Per seed for a hypernetwork fit: response, response_slope and the reference response_slope_mle
        of the headline statistic, and with several statistics the same three suffixed by each name;
        {} for a model without a hypernetwork."""
        if model.ensemble is None:
            return {}
        own = self.slopes([self.readout(model.ensemble.weights(self.hyper_input(x))) for x in self.probe_set.datasets])
        per: dict[str, dict[str, torch.Tensor]] = {}
        for name, reference in self.mle_slopes.items():
            seeds = len(reference)
            mean = float(reference.mean())
            se = float(reference.std() / math.sqrt(seeds)) if seeds > 1 else math.nan
            response = own[name] / mean if identified(mean, se) else torch.full_like(own[name], math.nan)
            per[name] = {"response": response, "response_slope": own[name], "response_slope_mle": reference}
        measured = [name for name in per if not per[name]["response"].isnan().any()]
        headline = min(measured, key=lambda name: float(per[name]["response"].mean())) if measured else next(iter(per))
        metrics = dict(per[headline])
        if len(per) > 1:
            metrics |= {f"{key}_{name}": value for name, values in per.items() for key, value in values.items()}
        return metrics

"""The estimator response (tasks/response.py): per-statistic responses, the identification guard and
the headline, on a toy study whose MLE and hypernetwork stand-in are exact linear estimators."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from models.ple import Fitted
from tasks.loop import Dataset
from tasks.response import Probes, Responsive, degenerate, identified

SHIFTS = (-1.0, 0.0, 1.0)
SEEDS, N = 8, 400


@dataclass
class Linear:
    """An estimator of the location that moves `gain` times as far as the data do (stands for H)."""

    gain: float
    spread_gain: float = 1.0

    def weights(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loc": self.gain * x.mean(1)[:, 0], "spread": self.spread_gain * x.std(1)[:, 0],
                "junk": torch.zeros(x.shape[0])}


@dataclass(frozen=True)
class Toy(Responsive):
    """Probes: N(shift, (1 + shift / 4)^2) draws; MLE reads loc and spread exactly, junk is noise."""

    def probes(self) -> Probes:
        g = torch.Generator().manual_seed(0)
        data = tuple(d + (1 + d / 4) * torch.randn(SEEDS, N, 1, generator=g) for d in SHIFTS)
        return Probes({"loc": SHIFTS, "spread": tuple(1 + d / 4 for d in SHIFTS), "junk": SHIFTS}, data)

    def statistics(self, estimate: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return estimate

    def fit(self, data: Dataset, method: str, generator: torch.Generator) -> Fitted:
        x = data.values
        return Fitted({"loc": x.mean(1)[:, 0], "spread": x.std(1)[:, 0], "junk": torch.randn(SEEDS, generator=generator)})


def _response(gain: float, spread_gain: float = 1.0) -> dict[str, torch.Tensor]:
    return Toy().response_metrics(Fitted(None, ensemble=Linear(gain, spread_gain)))


def test_each_statistic_is_relative_to_mle_and_an_unidentified_one_has_no_response():
    metrics = _response(0.5)
    assert abs(float(metrics["response_loc"].mean()) - 0.5) < 0.02  # H moves half as far as MLE
    assert abs(float(metrics["response_spread"].mean()) - 1.0) < 0.05  # MLE's own spread: slope about 1
    assert metrics["response_junk"].isnan().all()  # MLE's slope on junk is noise around 0
    assert not metrics["response_slope_junk"].isnan().any()  # H's own slope is still shown


def test_the_headline_is_the_lowest_identified_response():
    metrics = _response(0.9, spread_gain=0.1)
    assert torch.equal(metrics["response"], metrics["response_spread"])  # spread 0.1 < loc 0.9
    assert degenerate(float(metrics["response"].mean()))
    assert torch.equal(_response(0.1)["response"], _response(0.1)["response_loc"])


def test_without_an_identified_statistic_the_response_is_not_a_number():
    class Flat(Toy):
        def probes(self) -> Probes:
            return Probes({"junk": SHIFTS}, super().probes().datasets)

        def statistics(self, estimate):
            return {"junk": estimate["junk"]}

    metrics = Flat().response_metrics(Fitted(None, ensemble=Linear(1.0)))
    assert metrics["response"].isnan().all() and set(metrics) == {"response", "response_slope", "response_slope_mle"}


def test_identification_needs_the_slope_beyond_two_standard_errors():
    assert identified(0.5, 0.2) and not identified(0.5, 0.25) and not identified(-1.0, 0.1)
    assert identified(0.1, math.nan) and not identified(0.0, math.nan)

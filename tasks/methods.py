"""The estimators every study compares (docs/methods.md), dispatched in one place.

- mle:       the model's own fit: a closed form or EM when the study has one, else gradient descent
             on the generator's fit loss;
- hyper_mle: a hypernetwork H(X) trained on the fit loss alone (lambda = 0);
- ple:       the same hypernetwork with the PLE penalty, lambda = `lam` (default: the section's ple.lam).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from models.hypernet import HyperConfig
from models.ple import Fitted, Generative, PLEConfig, fit_direct, fit_ensemble
from tasks.params import HyperParams, PLEParams

HYPERNETWORK_METHODS = ("hyper_mle", "ple")


def fit_method(method: str, x: torch.Tensor, make_target: Callable[[], Generative], hyper: HyperParams,
               ple: PLEParams, generator: torch.Generator, device: torch.device = torch.device("cpu"), *,
               lam: float | None = None, closed_form: Callable[[torch.Tensor], object] | None = None,
               groups: torch.Tensor | None = None) -> Fitted:
    """Fit one model per seed to x (S, n, *event) by `method`; initialisation and batches from `generator`;
    `groups` (S, n): each point's group, for the reweighted training of the hypernetwork methods."""
    if method == "mle":
        if closed_form is not None:
            return Fitted(closed_form(x))
        return fit_direct(make_target, x, PLEConfig(**ple.model_dump()), generator, device)
    if method not in HYPERNETWORK_METHODS:
        raise ValueError(f"unknown method {method!r}; use mle, hyper_mle or ple")
    penalty = 0.0 if method == "hyper_mle" else ple.lam if lam is None else lam
    config = PLEConfig(**{**ple.model_dump(), "lam": penalty})
    return fit_ensemble(make_target, x, HyperConfig(**hyper.model_dump()), config, generator, device, groups)

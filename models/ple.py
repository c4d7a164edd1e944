"""Penalized Autophagy Estimation (PLE) through a hypernetwork, trained for many seeds at once.

Reference: Mayer et al., arXiv 2405.13977. For data X and a hypernetwork H_phi,

    L(phi) = fit_loss(X; H_phi(X)) + lambda * ||H_phi(Y) - H_phi(X)||^2 / dim(theta),
    Y ~ p_{H_phi(X)}, drawn by reparameterisation so that gradients reach phi.

lambda = 0 is "hyper-MLE": the same hypernetwork without the penalty, which separates the effect
of the penalty from that of the hypernetwork.

A generator used here subclasses `Generative`: `nll(x)` is its fit loss, `rsample(noise)` turns
noise drawn outside (by `noise(n, generator)`) into samples differentiably, so the same code runs
under `torch.func.vmap` over seeds with explicit, reproducible randomness. The hypernetworks of
all seeds are stacked with `torch.func.stack_module_state` and trained in one vectorised loop;
since Adam acts elementwise, this is exactly S independent trainings.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from models.hypernet import HyperConfig, HyperNetwork


class Generative(nn.Module, ABC):
    """A generator the PLE engine can train: fit loss, outside noise, reparameterised samples."""

    @abstractmethod
    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """Mean fit loss of the points x (n, d): a scalar."""

    @abstractmethod
    def noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """The randomness behind n samples, e.g. Gumbel and Gaussian draws: (n, ...)."""

    @abstractmethod
    def rsample(self, noise: torch.Tensor, sampling_bias: float = 1.0) -> torch.Tensor:
        """Samples (n, d) as a differentiable function of the parameters and `noise`."""

    def forward(self, *args, op: str = "nll"):
        """Dispatch so that `functional_call(module, weights, args, {"op": ...})` reaches any method."""
        return getattr(self, op)(*args)


@dataclass(frozen=True)
class PLEConfig:
    lam: float = 0.1  # penalty weight lambda; 0 gives hyper-MLE
    steps: int = 300  # Adam steps per fit
    lr: float = 1e-2
    batch_fraction: float = 1.0  # share of X in each step's random subset (1: all of X)


@dataclass
class TrainingCurve:
    """Per step, mean over seeds: the fit term and the penalty term; and both per seed at the end."""

    fit: list[float] = field(default_factory=list)
    penalty: list[float] = field(default_factory=list)
    final_fit: torch.Tensor | None = None  # (S,)
    final_penalty: torch.Tensor | None = None  # (S,)


def ple_terms(hyper: HyperNetwork, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit_loss(X; H(X)), ||H(Y) - H(X)||^2 / dim(theta)) with Y = rsample(H(X), noise)."""
    theta = hyper.flat_weights(x)
    weights = hyper.unflatten(theta)
    fit = hyper.run_target(weights, x, op="nll")
    y = hyper.run_target(weights, noise, op="rsample")
    penalty = (hyper.flat_weights(y) - theta).pow(2).mean()
    return fit, penalty


class PLEObjective(nn.Module):
    """Wraps a hypernetwork so one `functional_call` reaches both H(x) and the PLE terms."""

    def __init__(self, hyper: HyperNetwork):
        super().__init__()
        self.hyper = hyper

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None):
        """H(x) when noise is None, else (fit, penalty) of `ple_terms`."""
        return self.hyper(x) if noise is None else ple_terms(self.hyper, x, noise)


class HyperEnsemble:
    """S independent hypernetworks (one per seed), stacked for vectorised training and use."""

    def __init__(self, make: Callable[[], HyperNetwork], seeds: int):
        members = [PLEObjective(make()) for _ in range(seeds)]
        self.target: Generative = members[0].hyper.target
        self.base = copy.deepcopy(members[0]).to("meta")  # structure only; weights live in self.params
        self.params, self.buffers = stack_module_state(members)

    def _call(self, params, buffers, *args):
        return functional_call(self.base, (params, buffers), args)

    def weights(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """H(X) for every seed: x (S, n, d) -> {name: (S, *shape)}."""
        with torch.no_grad():
            return vmap(self._call)(self.params, self.buffers, x)

    def sensitivity(self, x: torch.Tensor) -> torch.Tensor:
        """||H(X1) - H(X2)|| / ||H(X1)|| per seed for the two halves X1, X2 of x (S, n, d).

        Near 0, the hypernetwork ignores its input, and the PLE penalty is met trivially.
        """
        half = x.shape[1] // 2

        def flat(part: torch.Tensor) -> torch.Tensor:
            return torch.cat([w.reshape(w.shape[0], -1) for w in self.weights(part).values()], dim=1)

        first, second = flat(x[:, :half]), flat(x[:, half: 2 * half])
        return (first - second).norm(dim=1) / first.norm(dim=1)

    def train(self, x: torch.Tensor, config: PLEConfig, generator: torch.Generator) -> TrainingCurve:
        """Minimise fit + lambda * penalty for every seed's data x (S, n, d); return the curve."""
        terms = vmap(self._call, randomness="error")
        optimizer = torch.optim.Adam(self.params.values(), lr=config.lr)
        curve = TrainingCurve()
        seeds, n = x.shape[:2]
        size = max(2, round(config.batch_fraction * n))
        for _ in range(config.steps):
            batch = x
            if size < n:
                index = torch.stack([torch.randperm(n, generator=generator)[:size] for _ in range(seeds)])
                index = index.reshape(seeds, size, *[1] * (x.dim() - 2)).expand(-1, -1, *x.shape[2:])
                batch = torch.gather(x, 1, index)
            noise = torch.stack([self.target.noise(batch.shape[1], generator) for _ in range(seeds)])
            fit, penalty = terms(self.params, self.buffers, batch, noise)
            loss = (fit + config.lam * penalty).sum()  # a sum of independent per-seed losses
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            curve.fit.append(fit.mean().item())
            curve.penalty.append(penalty.mean().item())
        curve.final_fit, curve.final_penalty = fit.detach(), penalty.detach()
        return curve


@dataclass
class Fitted:
    """A fitted model: its estimate (parameters of any form), and how a hypernetwork got there."""

    estimate: Any
    ensemble: HyperEnsemble | None = None
    curve: TrainingCurve = field(default_factory=TrainingCurve)


def fit_ensemble(make_target: Callable[[], Generative], x: torch.Tensor, hyper: HyperConfig, config: PLEConfig,
                 generator: torch.Generator) -> Fitted:
    """Train one hypernetwork per seed on x (S, n, d); initialisation and batches from `generator`."""
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        ensemble = HyperEnsemble(lambda: HyperNetwork(make_target(), x.shape[-1], hyper), x.shape[0])
    curve = ensemble.train(x.float(), config, generator)
    return Fitted(ensemble.weights(x.float()), ensemble, curve)

"""Penalized Autophagy Estimation (PLE) through a hypernetwork, trained for many seeds at once.

Reference: Mayer et al., arXiv 2405.13977. For data X and a hypernetwork H_phi,

    L(phi) = fit_loss(X; H_phi(X)) + lambda * ||H_phi(Y) - H_phi(X)||^2 / dim(theta),
    Y ~ p_{H_phi(X)}, drawn by reparameterisation so that gradients reach phi.

lambda = 0 is "hyper-MLE": the same hypernetwork without the penalty, which separates the effect
of the penalty from that of the hypernetwork.

A generator used here subclasses `Generative`: `nll(x, noise)` is its fit loss, `rsample(noise)`
turns noise drawn outside (by `noise(n, generator)`) into samples differentiably, so the same code
runs under `torch.func.vmap` over seeds with explicit, reproducible randomness. The same noise
reaches the fit loss, for losses that sample (a VAE's ELBO); others ignore it. The hypernetworks of
all seeds are stacked with `torch.func.stack_module_state` and trained in one vectorised loop;
since Adam acts elementwise, this is exactly S independent trainings.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from tqdm.auto import tqdm

from models.hypernet import HyperConfig, HyperNetwork


class Generative(nn.Module, ABC):
    """A generator the PLE engine can train: fit loss, outside noise, reparameterised samples."""

    @abstractmethod
    def nll(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Mean fit loss of the points x (n, *event): a scalar; `noise` (n, ...) as from `noise(n)`."""

    @abstractmethod
    def noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """The randomness behind n samples, e.g. Gumbel and Gaussian draws: (n, ...)."""

    @abstractmethod
    def rsample(self, noise: torch.Tensor, sampling_bias: float = 1.0) -> torch.Tensor:
        """Samples (n, *event) as a differentiable function of the parameters and `noise`."""

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
    fit = hyper.run_target(weights, x, noise, op="nll")
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


class Stacked(ABC):
    """S independent copies of a module (one per seed), stacked for vectorised training and use.

    Subclasses say what one member's loss is: `terms(batch, noise)` -> (fit, penalty) per seed.
    """

    def __init__(self, members: list[nn.Module], device: torch.device):
        self.base = copy.deepcopy(members[0]).to("meta")  # structure only; weights live in self.params
        self.params, self.buffers = stack_module_state([m.to(device) for m in members])
        self.device = device

    def _call(self, params, buffers, *args, **kwargs):
        return functional_call(self.base, (params, buffers), args, kwargs)

    @abstractmethod
    def terms(self, batch: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(fit, penalty), each (S,), for the batch (S, m, *event) and noise (S, m, ...)."""

    def train(self, x: torch.Tensor, config: PLEConfig, generator: torch.Generator) -> TrainingCurve:
        """Minimise fit + lambda * penalty for every seed's data x (S, n, *event); return the curve.

        Each step uses a random subset of batch_fraction * n points per seed; on CUDA the terms
        run under bfloat16 autocast. Batches and noise come from `generator` (on the CPU)."""
        optimizer = torch.optim.Adam(self.params.values(), lr=config.lr)
        curve = TrainingCurve()
        seeds, n = x.shape[:2]
        size = max(2, round(config.batch_fraction * n))
        x = x.to(self.device)
        for _ in tqdm(range(config.steps), desc=f"{type(self).__name__} steps", leave=False, disable=None,
                      mininterval=2.0):  # a progress bar on a terminal only
            batch = x
            if size < n:
                index = torch.stack([torch.randperm(n, generator=generator)[:size] for _ in range(seeds)])
                batch = x[torch.arange(seeds)[:, None], index.to(self.device)]
            noise = torch.stack([self.target.noise(size if size < n else n, generator) for _ in range(seeds)])
            with torch.autocast("cuda", torch.bfloat16, enabled=self.device.type == "cuda"):
                fit, penalty = self.terms(batch, noise.to(self.device))
            loss = (fit + config.lam * penalty).sum()  # a sum of independent per-seed losses
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            curve.fit.append(fit.mean().item())
            curve.penalty.append(penalty.mean().item())
        curve.final_fit, curve.final_penalty = fit.detach().float().cpu(), penalty.detach().float().cpu()
        return curve


class TargetEnsemble(Stacked):
    """S generators trained directly on their fit loss (method `mle` of neural generators)."""

    def __init__(self, make: Callable[[], Generative], seeds: int, device: torch.device = torch.device("cpu")):
        members = [make() for _ in range(seeds)]
        self.target: Generative = members[0]
        super().__init__(members, device)

    def terms(self, batch, noise):
        fit = vmap(lambda p, b, x, e: self._call(p, b, x, e, op="nll"), randomness="error")(
            self.params, self.buffers, batch, noise)
        return fit, torch.zeros_like(fit)

    def weights(self) -> dict[str, torch.Tensor]:
        """The fitted parameters: {name: (S, *shape)}."""
        return {name: p.detach() for name, p in self.params.items()}


class HyperEnsemble(Stacked):
    """S independent hypernetworks (one per seed) trained on the PLE objective."""

    def __init__(self, make: Callable[[], HyperNetwork], seeds: int, device: torch.device = torch.device("cpu")):
        members = [PLEObjective(make()) for _ in range(seeds)]
        self.target: Generative = members[0].hyper.target.to(device)
        super().__init__(members, device)

    def terms(self, batch, noise):
        return vmap(self._call, randomness="error")(self.params, self.buffers, batch, noise)

    def weights(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """H(X) for every seed: x (S, n, *event) -> {name: (S, *shape)}."""
        with torch.no_grad():
            return vmap(self._call)(self.params, self.buffers, x.to(self.device))

    def sensitivity(self, x: torch.Tensor) -> torch.Tensor:
        """||H(X1) - H(X2)|| / ||H(X1)|| per seed for the two halves X1, X2 of x (S, n, *event).

        Near 0, the hypernetwork ignores its input, and the PLE penalty is met trivially.
        """
        half = x.shape[1] // 2

        def flat(part: torch.Tensor) -> torch.Tensor:
            return torch.cat([w.reshape(w.shape[0], -1) for w in self.weights(part).values()], dim=1)

        first, second = flat(x[:, :half]), flat(x[:, half: 2 * half])
        return ((first - second).norm(dim=1) / first.norm(dim=1)).cpu()


@dataclass
class Fitted:
    """A fitted model: its estimate (parameters of any form), and how a hypernetwork got there."""

    estimate: Any
    ensemble: HyperEnsemble | None = None  # set for the hypernetwork methods
    curve: TrainingCurve = field(default_factory=TrainingCurve)


def _seeded(generator: torch.Generator, build: Callable[[], Stacked]) -> Stacked:
    """Build an ensemble with its initial weights drawn from a seed taken from `generator`."""
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        return build()


def fit_ensemble(make_target: Callable[[], Generative], x: torch.Tensor, hyper: HyperConfig, config: PLEConfig,
                 generator: torch.Generator, device: torch.device = torch.device("cpu")) -> Fitted:
    """Train one hypernetwork per seed on x (S, n, *event); initialisation and batches from `generator`.

    The estimate is H(X) on all of X: {name: (S, *shape)}."""
    features = math.prod(x.shape[2:])
    ensemble = _seeded(generator, lambda: HyperEnsemble(
        lambda: HyperNetwork(make_target(), features, hyper), x.shape[0], device))
    curve = ensemble.train(x.float(), config, generator)
    return Fitted(ensemble.weights(x.float()), ensemble, curve)


def fit_direct(make_target: Callable[[], Generative], x: torch.Tensor, config: PLEConfig,
               generator: torch.Generator, device: torch.device = torch.device("cpu")) -> Fitted:
    """Train one generator per seed on its fit loss alone (config.lam is ignored); estimate {name: (S, *shape)}."""
    ensemble = _seeded(generator, lambda: TargetEnsemble(make_target, x.shape[0], device))
    curve = ensemble.train(x.float(), replace(config, lam=0.0), generator)
    return Fitted(ensemble.weights(), None, curve)


def sample_weights(target: Generative, weights: dict[str, torch.Tensor], n: int, sampling_bias: float,
                   generator: torch.Generator, batch_size: int = 1024) -> torch.Tensor:
    """(S, n, *event) samples of the S generators with the stacked `weights`, drawn in batches."""
    device = next(iter(weights.values())).device
    seeds = next(iter(weights.values())).shape[0]
    draw = vmap(lambda w, e: functional_call(target, w, (e, sampling_bias), {"op": "rsample"}), randomness="error")
    parts = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            noise = torch.stack([target.noise(m, generator) for _ in range(seeds)]).to(device)
            parts.append(draw(weights, noise).cpu())
    return torch.cat(parts, dim=1)

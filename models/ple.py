"""Penalized Autophagy Estimation (PLE) through a hypernetwork, trained for many seeds at once.

Reference: Mayer et al., arXiv 2405.13977. For data X and a hypernetwork H_phi,

    L(phi) = E_X [ fit_loss(X; H_phi(X)) + lambda * ||H_phi(Y) - H_phi(X)||^2 ],
    Y ~ p_{H_phi(X)}, drawn by reparameterisation so that gradients reach phi,

with X ranging over a family of datasets around the data (`draw_indices`), so that H_phi is trained
as an estimator (a map from datasets to weights), not as the fit of one dataset. The squared
distance is summed, averaged or scaled per tensor (`distance`); `ple_terms` lists the forms.

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
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
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

    def summary_features(self, x: torch.Tensor) -> torch.Tensor:
        """What a hypernetwork's encoder reads of every point: x (n, *event) -> (n, F); the flat event."""
        return x.reshape(x.shape[0], -1)

    def forward(self, *args, op: str = "nll"):
        """Dispatch so that `functional_call(module, weights, args, {"op": ...})` reaches any method."""
        return getattr(self, op)(*args)


PENALTIES = ("sum", "mean", "scaled")
FORMS = ("paper", "self_fit", "stop_gradient")
TRAININGS = ("halves", "bootstrap", "reweighted")


@dataclass(frozen=True)
class PLEConfig:
    lam: float = 0.1  # penalty weight lambda; 0 gives hyper-MLE
    steps: int = 300  # Adam steps per fit
    lr: float = 1e-2
    batch_fraction: float = 1.0  # size of each step's dataset, as a share of n
    penalty: str = "sum"  # how ||H(Y) - H(X)||^2 is scaled: sum | mean | scaled
    form: str = "paper"  # paper | self_fit | stop_gradient
    training: str = "halves"  # the datasets H trains on: halves | bootstrap | reweighted
    concentration: float = 1.0  # Dirichlet concentration of the group shares (reweighted)

    def __post_init__(self):
        for name, allowed in (("penalty", PENALTIES), ("form", FORMS), ("training", TRAININGS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; use one of {', '.join(allowed)}")
        if self.concentration <= 0:
            raise ValueError(f"concentration must be > 0, got {self.concentration}")


@dataclass
class TrainingCurve:
    """Per step, mean over seeds: the fit term and the penalty term; and both per seed at the end."""

    fit: list[float] = field(default_factory=list)
    penalty: list[float] = field(default_factory=list)
    final_fit: torch.Tensor | None = None  # (S,)
    final_penalty: torch.Tensor | None = None  # (S,)


def distance(hyper: HyperNetwork, theta: dict[str, torch.Tensor], other: dict[str, torch.Tensor],
             penalty: str) -> torch.Tensor:
    """||other - theta||^2 summed over entries (sum), divided by P (mean), or sum_t ||.||_t^2 / s_t^2 (scaled)."""
    parts = [(other[name] - theta[name]).pow(2).sum() for name in hyper.names]
    if penalty == "scaled":
        return sum(part / s ** 2 for part, s in zip(parts, hyper.scales))
    total = sum(parts)
    return total / sum(t.numel() for t in theta.values()) if penalty == "mean" else total


def ple_terms(hyper: HyperNetwork, x: torch.Tensor, noise: torch.Tensor, penalty: str = "sum",
              form: str = "paper") -> tuple[torch.Tensor, torch.Tensor]:
    """(fit_loss(X; H(X)), the penalty of `form`) with Y = rsample(H(X), noise):

    paper          d(H(Y), H(X))
    self_fit       d(H(Y), H(X)) + fit_loss(Y; H(Y))
    stop_gradient  d(H'(Y), H(X)), H' = H with its parameters detached (gradients reach phi through
                   Y and H(X) only)
    """
    theta = hyper(x)
    fit = hyper.run_target(theta, x, noise, op="nll")
    y = hyper.run_target(theta, noise, op="rsample")
    if form == "stop_gradient":
        frozen = {name: p.detach() for name, p in hyper.named_parameters()}
        theta_y = functional_call(hyper, frozen, (y,))
    else:
        theta_y = hyper(y)
    term = distance(hyper, theta, theta_y, penalty)
    if form == "self_fit":
        term = term + hyper.run_target(theta_y, y, noise, op="nll")
    return fit, term


class PLEObjective(nn.Module):
    """Wraps a hypernetwork so one `functional_call` reaches both H(x) and the PLE terms."""

    def __init__(self, hyper: HyperNetwork, penalty: str = "sum", form: str = "paper"):
        super().__init__()
        self.hyper, self.penalty, self.form = hyper, penalty, form

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None):
        """H(x) when noise is None, else (fit, penalty) of `ple_terms`."""
        return self.hyper(x) if noise is None else ple_terms(self.hyper, x, noise, self.penalty, self.form)


def draw_indices(config: PLEConfig, seeds: int, n: int, groups: torch.Tensor | None,
                 generator: torch.Generator, rng: np.random.Generator) -> torch.Tensor | None:
    """Each seed's dataset for one step, as indices (S, m) into its n points (None: all of them).

    halves      m = batch_fraction n distinct points (all n when the fraction is 1);
    bootstrap   m points drawn with replacement;
    reweighted  m points drawn with replacement with P(i) = w_g(i) / n_g(i), where g(i) is the group
                of point i (`groups` (S, n)), n_g its size and w ~ Dirichlet(concentration) over the
                groups: every step a dataset with new group proportions.
    """
    size = max(2, round(config.batch_fraction * n))
    if config.training == "halves":
        if size >= n:
            return None
        return torch.stack([torch.randperm(n, generator=generator)[:size] for _ in range(seeds)])
    if config.training == "bootstrap":
        return torch.randint(n, (seeds, size), generator=generator)
    k = int(groups.max()) + 1
    counts = F.one_hot(groups, k).sum(1).double()  # (S, K)
    shares = torch.from_numpy(rng.dirichlet(np.full(k, config.concentration), size=seeds))  # (S, K)
    probability = (shares / counts.clamp_min(1)).gather(1, groups)  # (S, n)
    return torch.multinomial(probability, size, replacement=True, generator=generator)


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

    def train(self, x: torch.Tensor, config: PLEConfig, generator: torch.Generator,
              groups: torch.Tensor | None = None) -> TrainingCurve:
        """Minimise fit + lambda * penalty for every seed's data x (S, n, *event); return the curve.

        Each step's data per seed come from `draw_indices` (`groups` (S, n) for reweighted); on CUDA
        the terms run under bfloat16 autocast. Batches and noise come from `generator` (on the CPU)."""
        if config.training == "reweighted" and groups is None:
            raise ValueError("training 'reweighted' needs the group of every point; use halves or bootstrap")
        optimizer = torch.optim.Adam(self.params.values(), lr=config.lr)
        curve = TrainingCurve()
        seeds, n = x.shape[:2]
        rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
        x = x.to(self.device)
        for _ in tqdm(range(config.steps), desc=f"{type(self).__name__} steps", leave=False, disable=None,
                      mininterval=2.0):  # a progress bar on a terminal only
            index = draw_indices(config, seeds, n, groups, generator, rng)
            batch = x if index is None else x[torch.arange(seeds)[:, None], index.to(self.device)]
            noise = torch.stack([self.target.noise(batch.shape[1], generator) for _ in range(seeds)])
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

    def __init__(self, make: Callable[[], HyperNetwork], seeds: int, config: PLEConfig,
                 device: torch.device = torch.device("cpu")):
        members = [PLEObjective(make(), config.penalty, config.form) for _ in range(seeds)]
        self.target: Generative = members[0].hyper.target.to(device)
        super().__init__(members, device)

    def terms(self, batch, noise):
        return vmap(self._call, randomness="error")(self.params, self.buffers, batch, noise)

    def weights(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """H(X) for every seed: x (S, n, *event) -> {name: (S, *shape)}."""
        with torch.no_grad():
            return vmap(self._call)(self.params, self.buffers, x.to(self.device))


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
                 generator: torch.Generator, device: torch.device = torch.device("cpu"),
                 groups: torch.Tensor | None = None) -> Fitted:
    """Train one hypernetwork per seed on x (S, n, *event) (`groups` (S, n) for reweighted training);
    initialisation and batches from `generator`. The estimate is H(X) on all of X: {name: (S, *shape)}."""
    with torch.random.fork_rng():  # a target only to size H's input: no draw of the fit's randomness
        features = make_target().summary_features(x[0, :1].float()).shape[-1]
    ensemble = _seeded(generator, lambda: HyperEnsemble(
        lambda: HyperNetwork(make_target(), features, hyper), x.shape[0], config, device))
    curve = ensemble.train(x.float(), config, generator, groups)
    return Fitted(ensemble.weights(x.float()), ensemble, curve)


def fit_direct(make_target: Callable[[], Generative], x: torch.Tensor, config: PLEConfig,
               generator: torch.Generator, device: torch.device = torch.device("cpu")) -> Fitted:
    """Train one generator per seed on its fit loss alone, on random subsets of its data (config.lam and
    config.training are ignored); estimate {name: (S, *shape)}."""
    ensemble = _seeded(generator, lambda: TargetEnsemble(make_target, x.shape[0], device))
    curve = ensemble.train(x.float(), replace(config, lam=0.0, training="halves"), generator)
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

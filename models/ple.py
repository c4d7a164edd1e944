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

A two-player generator (a GAN) names the submodule of its second player in `adversary` (the
discriminator D). D's parameters are neither emitted by H nor penalised: each step first updates D
on `adversary_loss(x, noise)` with the generator's weights fixed, then the generator (directly, or
through H) on fit + lambda * penalty with D fixed, where the fit term `nll` is the generator's
adversarial loss under the current D. Every seed has its own D; the engine holds no GAN-specific
code.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from tqdm.auto import tqdm

from models.hypernet import HyperConfig, HyperNetwork, emitted_names


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

    adversary: str | None = None  # the submodule of a second player (a GAN's discriminator), if any
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's betas for this generator's training

    def adversary_loss(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The second player's loss on data x and samples from `noise` (a scalar); only with `adversary`."""
        raise NotImplementedError(f"{type(self).__name__} has no adversary")

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
    """Per step, mean over seeds: the fit term, the penalty term and the adversary's loss; the first two
    per seed at the end."""

    fit: list[float] = field(default_factory=list)
    penalty: list[float] = field(default_factory=list)
    adversary: list[float] = field(default_factory=list)  # the adversary's loss (two-player generators)
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


def ple_terms(hyper: HyperNetwork, x: torch.Tensor, noise: torch.Tensor, penalty: str = "sum", form: str = "paper",
              adversary: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit_loss(X; H(X)), the penalty of `form`) with Y = rsample(H(X), noise); `adversary`: the
    weights of a two-player generator's adversary, which every fit loss reads (and H does not emit):

    paper          d(H(Y), H(X))
    self_fit       d(H(Y), H(X)) + fit_loss(Y; H(Y))
    stop_gradient  d(H'(Y), H(X)), H' = H with its parameters detached (gradients reach phi through
                   Y and H(X) only)
    """
    other = adversary or {}
    theta = hyper(x)
    fit = hyper.run_target(theta | other, x, noise, op="nll")
    y = hyper.run_target(theta, noise, op="rsample")
    if form == "stop_gradient":
        frozen = {name: p.detach() for name, p in hyper.named_parameters()}
        theta_y = functional_call(hyper, frozen, (y,))
    else:
        theta_y = hyper(y)
    term = distance(hyper, theta, theta_y, penalty)
    if form == "self_fit":
        term = term + hyper.run_target(theta_y | other, y, noise, op="nll")
    return fit, term


class PLEObjective(nn.Module):
    """Wraps a hypernetwork so one `functional_call` reaches H(x), the PLE terms and the adversary's loss."""

    def __init__(self, hyper: HyperNetwork, penalty: str = "sum", form: str = "paper"):
        super().__init__()
        self.hyper, self.penalty, self.form = hyper, penalty, form

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None,
                adversary: dict[str, torch.Tensor] | None = None, op: str = "terms"):
        """H(x) when noise is None; else (fit, penalty) of `ple_terms` (op "terms") or the adversary's
        loss against the generator H(x) (op "adversary_loss")."""
        if noise is None:
            return self.hyper(x)
        if op == "adversary_loss":
            return self.hyper.run_target(self.hyper(x) | adversary, x, noise, op=op)
        return ple_terms(self.hyper, x, noise, self.penalty, self.form, adversary)


def group_counts(groups: torch.Tensor) -> torch.Tensor:
    """The size of every group per seed: groups (S, n) of labels 0..K-1 -> (S, K) float64."""
    return F.one_hot(groups, int(groups.max()) + 1).sum(1).double()


def draw_indices(config: PLEConfig, seeds: int, n: int, groups: torch.Tensor | None,
                 generator: torch.Generator, rng: np.random.Generator,
                 counts: torch.Tensor | None = None) -> torch.Tensor | None:
    """Each seed's dataset for one step, as indices (S, m) into its n points (None: all of them).

    halves      m = batch_fraction n distinct points (all n when the fraction is 1);
    bootstrap   m points drawn with replacement;
    reweighted  m points drawn with replacement with P(i) = w_g(i) / n_g(i), where g(i) is the group
                of point i (`groups` (S, n)), n_g its size and w ~ Dirichlet(concentration) over the
                groups: every step a dataset with new group proportions (`counts`: `group_counts(groups)`,
                computed here when not given).
    """
    size = max(2, round(config.batch_fraction * n))
    if config.training == "halves":
        if size >= n:
            return None
        return torch.stack([torch.randperm(n, generator=generator)[:size] for _ in range(seeds)])
    if config.training == "bootstrap":
        return torch.randint(n, (seeds, size), generator=generator)
    counts = group_counts(groups) if counts is None else counts  # (S, K)
    shares = torch.from_numpy(rng.dirichlet(np.full(counts.shape[1], config.concentration), size=seeds))
    probability = (shares / counts.clamp_min(1)).gather(1, groups)  # (S, n)
    return torch.multinomial(probability, size, replacement=True, generator=generator)


class Stacked(ABC):
    """S independent copies of a module (one per seed), stacked for vectorised training and use, and
    the S adversaries of a two-player generator (`adversary`: {name: (S, *shape)}, empty otherwise).

    Subclasses say what one member computes: `_loss(...)` -> (fit, penalty), or its adversary's loss.
    """

    def __init__(self, members: list[nn.Module], device: torch.device, adversary: dict[str, torch.Tensor]):
        self.base = copy.deepcopy(members[0]).to("meta")  # structure only; weights live in self.params
        self.params, self.buffers = stack_module_state([m.to(device) for m in members])
        self.adversary = adversary
        self.device = device

    def _call(self, params, buffers, *args, **kwargs):
        return functional_call(self.base, (params, buffers), args, kwargs)

    @abstractmethod
    def _loss(self, params, adversary, buffers, batch, noise, op: str):
        """One member's (fit, penalty) (op "terms") or its adversary's loss (op "adversary_loss")."""

    def terms(self, batch: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(fit, penalty), each (S,), for the batch (S, m, *event) and noise (S, m, ...); adversaries fixed."""
        adversary = {name: p.detach() for name, p in self.adversary.items()}
        return vmap(partial(self._loss, op="terms"), randomness="error")(
            self.params, adversary, self.buffers, batch, noise)

    def adversary_terms(self, batch: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The adversaries' losses (S,) against the current generators, which stay fixed."""
        own = {name: p.detach() for name, p in self.params.items()}
        return vmap(partial(self._loss, op="adversary_loss"), randomness="error")(
            own, self.adversary, self.buffers, batch, noise)

    def adversary_weights(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.adversary.items()}

    def train(self, x: torch.Tensor, config: PLEConfig, generator: torch.Generator,
              groups: torch.Tensor | None = None) -> TrainingCurve:
        """Minimise fit + lambda * penalty for every seed's data x (S, n, *event); return the curve.

        Each step's data per seed come from `draw_indices` (`groups` (S, n) for reweighted); with
        adversaries, each step first takes one step of theirs on the same batch and noise. On CUDA the
        losses run under bfloat16 autocast. Batches and noise come from `generator` (on the CPU)."""
        if config.training == "reweighted" and groups is None:
            raise ValueError("training 'reweighted' needs the group of every point; use halves or bootstrap")
        optimizer = torch.optim.Adam(self.params.values(), lr=config.lr, betas=self.target.betas)
        rival = torch.optim.Adam(self.adversary.values(), lr=config.lr, betas=self.target.betas) \
            if self.adversary else None
        counts = group_counts(groups) if config.training == "reweighted" else None
        curve = TrainingCurve()
        seeds, n = x.shape[:2]
        rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
        x = x.to(self.device)
        autocast = partial(torch.autocast, "cuda", torch.bfloat16, enabled=self.device.type == "cuda")
        for _ in tqdm(range(config.steps), desc=f"{type(self).__name__} steps", leave=False, disable=None,
                      mininterval=2.0):  # a progress bar on a terminal only
            index = draw_indices(config, seeds, n, groups, generator, rng, counts)
            batch = x if index is None else x[torch.arange(seeds)[:, None], index.to(self.device)]
            noise = torch.stack([self.target.noise(batch.shape[1], generator) for _ in range(seeds)])
            noise = noise.to(self.device)
            if rival is not None:
                with autocast():
                    rival_loss = self.adversary_terms(batch, noise)
                rival.zero_grad(set_to_none=True)
                rival_loss.sum().backward()
                rival.step()
                curve.adversary.append(rival_loss.mean().item())
            with autocast():
                fit, penalty = self.terms(batch, noise)
            loss = (fit + config.lam * penalty).sum()  # a sum of independent per-seed losses
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            curve.fit.append(fit.mean().item())
            curve.penalty.append(penalty.mean().item())
        curve.final_fit, curve.final_penalty = fit.detach().float().cpu(), penalty.detach().float().cpu()
        return curve


def adversary_parameters(target: Generative) -> dict[str, torch.Tensor]:
    """The parameters of a two-player generator's adversary (those H does not emit): {name: tensor}."""
    return {name: p for name, p in target.named_parameters() if name not in emitted_names(target)}


class TargetEnsemble(Stacked):
    """S generators trained directly on their fit loss (method `mle` of neural generators)."""

    def __init__(self, make: Callable[[], Generative], seeds: int, device: torch.device = torch.device("cpu")):
        members = [make() for _ in range(seeds)]
        self.target: Generative = members[0]
        super().__init__(members, device, {})
        rival = adversary_parameters(self.target)
        self.adversary = {name: self.params.pop(name) for name in rival}

    def _loss(self, params, adversary, buffers, batch, noise, op):
        loss = self._call(params | adversary, buffers, batch, noise, op="nll" if op == "terms" else op)
        return (loss, torch.zeros_like(loss)) if op == "terms" else loss

    def weights(self) -> dict[str, torch.Tensor]:
        """The fitted parameters, the adversary's too: {name: (S, *shape)}."""
        return {name: p.detach() for name, p in self.params.items()} | self.adversary_weights()


class HyperEnsemble(Stacked):
    """S independent hypernetworks (one per seed) trained on the PLE objective, each with its
    generator's adversary when it has one."""

    def __init__(self, make: Callable[[], HyperNetwork], seeds: int, config: PLEConfig,
                 device: torch.device = torch.device("cpu")):
        members = [PLEObjective(make(), config.penalty, config.form) for _ in range(seeds)]
        self.target: Generative = members[0].hyper.target.to(device)
        rivals = [adversary_parameters(m.hyper.target) for m in members]
        adversary = {name: torch.stack([r[name].detach() for r in rivals]).to(device).requires_grad_()
                     for name in rivals[0]}
        super().__init__(members, device, adversary)

    def _loss(self, params, adversary, buffers, batch, noise, op):
        return self._call(params, buffers, batch, noise, adversary, op)

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
    initialisation and batches from `generator`. The estimate is H(X) on all of X: {name: (S, *shape)},
    with the adversary's weights for a two-player generator."""
    with torch.random.fork_rng():  # a target only to size H's input: no draw of the fit's randomness
        features = make_target().summary_features(x[0, :1].float()).shape[-1]
    ensemble = _seeded(generator, lambda: HyperEnsemble(
        lambda: HyperNetwork(make_target(), features, hyper), x.shape[0], config, device))
    curve = ensemble.train(x.float(), config, generator, groups)
    return Fitted(ensemble.weights(x.float()) | ensemble.adversary_weights(), ensemble, curve)


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

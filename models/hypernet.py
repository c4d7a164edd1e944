"""A hypernetwork that maps a batch of data to every parameter of any target `nn.Module`.

References: Mayer et al., "Improving Fairness and Mitigating MADness in Generative Models"
(arXiv 2405.13977), section on hypernetworks; the torchhyper library by the same authors.

    X (n, d) --features f, encoder MLP per sample--> (n, h) --mean over n--> (h,) --post MLP--> z (h,)
    z --one head per tensor t--> theta_t = theta0_t + s_t f_t(z) --torch.func.functional_call--> target

Mean pooling makes H(X) invariant to the order of the points and defined for any n. The target's
buffers (e.g. batch-norm statistics) stay the target's buffers; only parameters are emitted.

Every tensor t has its own learned base theta0_t (initialised to the target's own initial value),
its own scale s_t and its own data path f_t, linear in z:
- full:       f_t(z) = U_t z reshaped, U_t (numel_t, h). Exact, h numel_t weights (torchhyper's head).
- factorised: a matrix W_t (rows, cols) (a conv kernel as (out, in k k)) moves by A_t M_t(z) B_t^T,
              A_t (rows, r), B_t (cols, r), M_t(z) = (L_t z) as an r x r matrix; a vector by
              A_t (L_t z), A_t (numel, r), L_t (r, h). Cost r (rows + cols) + r^2 h, or r numel + r h.
Head `lowrank` takes the cheaper of the two per tensor (small tensors stay exact); head `linear`
is full everywhere. s_t = init_scale / sqrt(fan_in) for a matrix; for a vector init_scale times the
root mean square of its initial value (1 when it starts at zero); f_t starts with entries of order
1, so the data path starts near init_scale of the tensor's scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

HEADS = ("lowrank", "linear")


@dataclass(frozen=True)
class HyperConfig:
    hidden: int = 64  # width h of the encoder, the pooled code and the post MLP
    encoder_depth: int = 2  # layers of the per-sample MLP
    post_depth: int = 1  # layers of the MLP after pooling (0: none)
    head: str = "lowrank"  # "lowrank" (per tensor, factorised when cheaper) or "linear" (full per tensor)
    rank: int = 8  # r of the factorised heads
    init_scale: float = 0.1  # size of the data path at the start, relative to each tensor's scale


def mlp(width_in: int, width: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(width_in if i == 0 else width, width), nn.SiLU()]
    return nn.Sequential(*layers)


def tensor_scale(p: torch.Tensor, init_scale: float) -> float:
    """s_t: init_scale / sqrt(fan_in) for a matrix; init_scale x RMS (1 if zero) for a vector."""
    if p.dim() >= 2:
        return init_scale / math.sqrt(p[0].numel())
    rms = float(p.detach().float().pow(2).mean().sqrt())
    return init_scale * (rms if rms > 0 else 1.0)


class FullHead(nn.Module):
    """f(z) = U z, reshaped to the tensor: exact, any linear dependence on z."""

    def __init__(self, hidden: int, shape: torch.Size):
        super().__init__()
        self.shape = shape
        self.weight = nn.Parameter(torch.randn(math.prod(shape), hidden) / math.sqrt(hidden))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (self.weight @ z).reshape(self.shape)


class FactorisedHead(nn.Module):
    """f(z) = A M(z) B^T for a matrix (M(z) = L z as r x r), A (L z) for a vector."""

    def __init__(self, hidden: int, shape: torch.Size, rank: int):
        super().__init__()
        self.shape = shape
        rows = shape[0]
        self.matrix = len(shape) >= 2
        self.left = nn.Parameter(torch.randn(rows, rank))
        if self.matrix:
            self.right = nn.Parameter(torch.randn(math.prod(shape[1:]), rank))
            self.code = nn.Parameter(torch.randn(rank * rank, hidden) / (rank * math.sqrt(hidden)))
        else:
            self.code = nn.Parameter(torch.randn(rank, hidden) / math.sqrt(rank * hidden))

    @staticmethod
    def cost(hidden: int, shape: torch.Size, rank: int) -> int:
        if len(shape) >= 2:
            return rank * (shape[0] + math.prod(shape[1:])) + rank * rank * hidden
        return rank * math.prod(shape) + rank * hidden

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        m = self.code @ z
        if not self.matrix:
            return self.left @ m
        r = self.left.shape[1]
        return (self.left @ m.reshape(r, r) @ self.right.T).reshape(self.shape)


class HyperNetwork(nn.Module):
    """H_phi: data batch (n, d) -> {parameter name: tensor} for `target`."""

    def __init__(self, target: nn.Module, in_features: int, config: HyperConfig = HyperConfig()):
        super().__init__()
        if config.head not in HEADS:
            raise ValueError(f"unknown hypernetwork head {config.head!r}; use one of {', '.join(HEADS)}")
        if config.rank < 1:
            raise ValueError(f"hypernetwork rank must be >= 1, got {config.rank}")
        emitted = emitted_names(target)
        named = [(name, p) for name, p in target.named_parameters() if name in emitted]
        if not named:
            raise ValueError(f"{type(target).__name__} has no parameters for a hypernetwork to emit")
        bad = [name for name, p in named if not p.is_floating_point() or p.is_complex()]
        if bad:
            raise ValueError(f"{type(target).__name__}: parameters {bad} are not real floating point tensors")
        self.__dict__["target"] = target  # not a submodule: its parameters are not phi
        self.names = [name for name, _ in named]
        self.config = config
        self.encoder = mlp(in_features, config.hidden, config.encoder_depth)
        self.post = mlp(config.hidden, config.hidden, config.post_depth)
        self.bases = nn.ParameterList(nn.Parameter(p.detach().float().clone()) for _, p in named)
        self.scales = [tensor_scale(p, config.init_scale) for _, p in named]
        self.heads = nn.ModuleList(self._head(p.shape) for _, p in named)

    def _head(self, shape: torch.Size) -> nn.Module:
        h, r = self.config.hidden, self.config.rank
        if self.config.head == "lowrank" and FactorisedHead.cost(h, shape, r) < h * math.prod(shape):
            return FactorisedHead(h, shape, r)
        return FullHead(h, shape)

    def code(self, x: torch.Tensor) -> torch.Tensor:
        """z = post(mean_i encoder(f(x_i))): (n, *event) -> (h,); f is the target's `summary_features`
        when it has one (a conditional generator's per-label features), else the flat point."""
        read = getattr(self.target, "summary_features", None)
        return self.post(self.encoder(read(x) if read else x.reshape(x.shape[0], -1)).mean(dim=0))

    def deltas(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The data-dependent parts s_t f_t(z) of every tensor, in the target's order."""
        z = self.code(x)
        return [s * head(z) for s, head in zip(self.scales, self.heads)]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """theta = H(x): {name: theta0_t + s_t f_t(z)}."""
        return {name: base + delta for name, base, delta in zip(self.names, self.bases, self.deltas(x))}

    def run_target(self, weights: dict[str, torch.Tensor], *args, **kwargs):
        """Call the target with `weights` in place of its parameters; its buffers stay its own."""
        return functional_call(self.target, weights, args, kwargs)


def emitted_names(target: nn.Module) -> set[str]:
    """The target's parameters H emits: all but those of its adversary (the submodule `target.adversary`
    names, e.g. a GAN's discriminator), which trains alongside and is not estimated from data."""
    prefix = getattr(target, "adversary", None)
    return {name for name, _ in target.named_parameters() if not (prefix and name.startswith(prefix + "."))}


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

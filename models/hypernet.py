"""A hypernetwork that maps a batch of data to every parameter of any target `nn.Module`.

References: Mayer et al., "Improving Fairness and Mitigating MADness in Generative Models"
(arXiv 2405.13977), section on hypernetworks; the torchhyper library by the same authors.

    X (n, d) --encoder MLP per sample--> (n, h) --mean over n--> (h,) --post MLP--> z (h,)
    z --heads--> {name: tensor shaped like target.<name>}  --torch.func.functional_call--> target

Mean pooling makes H(X) invariant to the order of the points and defined for any n. The target's
buffers (e.g. batch-norm statistics) stay the target's buffers; only parameters are emitted.

Heads:
- `linear`: one Linear(h, numel) per tensor. Exact but costs h x numel weights per tensor
  (77M for one 784x1024 layer at h = 96).
- `chunked` (default): the flat parameter vector theta (P entries) is cut into C = ceil(P / chunk)
  chunks (chunk <= P); one shared Linear(h + e, chunk) maps [z, e_c] (z and a learned embedding of chunk c)
  to that chunk's entries, added to a learned base theta_0 initialised with the target's own
  initial weights: theta = theta_0 + head([z, e_c])_c. Cost P + C e + (h + e + 1) chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call


@dataclass(frozen=True)
class HyperConfig:
    hidden: int = 64  # width h of the encoder, the pooled code and the post MLP
    encoder_depth: int = 2  # layers of the per-sample MLP
    post_depth: int = 1  # layers of the MLP after pooling (0: none)
    head: str = "chunked"  # "chunked" or "linear"
    chunk: int = 256  # entries emitted per chunk by the shared head
    embed: int = 16  # size e of the chunk embeddings
    init_scale: float = 0.1  # scale of the initial head output around theta_0


def mlp(width_in: int, width: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(width_in if i == 0 else width, width), nn.SiLU()]
    return nn.Sequential(*layers)


class HyperNetwork(nn.Module):
    """H_phi: data batch (n, d) -> {parameter name: tensor} for `target`."""

    def __init__(self, target: nn.Module, in_features: int, config: HyperConfig = HyperConfig()):
        super().__init__()
        if config.head not in ("chunked", "linear"):
            raise ValueError(f"unknown hypernetwork head {config.head!r}; use 'chunked' or 'linear'")
        named = [(name, p) for name, p in target.named_parameters()]
        if not named:
            raise ValueError(f"{type(target).__name__} has no parameters for a hypernetwork to emit")
        bad = [name for name, p in named if not p.is_floating_point() or p.is_complex()]
        if bad:
            raise ValueError(f"{type(target).__name__}: parameters {bad} are not real floating point tensors")
        self.__dict__["target"] = target  # not a submodule: its parameters are not phi
        self.names = [name for name, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.config = config
        self.encoder = mlp(in_features, config.hidden, config.encoder_depth)
        self.post = mlp(config.hidden, config.hidden, config.post_depth)
        flat = torch.cat([p.detach().reshape(-1) for _, p in named]).float()
        if config.head == "linear":
            self.heads = nn.ModuleList(nn.Linear(config.hidden, n) for n in self.numels)
            for head, (_, p) in zip(self.heads, named):
                nn.init.normal_(head.weight, std=config.init_scale / math.sqrt(config.hidden))
                head.bias.data.copy_(p.detach().reshape(-1))
        else:
            chunk = min(config.chunk, flat.numel())
            self.base = nn.Parameter(flat)
            self.embeddings = nn.Parameter(torch.randn(math.ceil(flat.numel() / chunk), config.embed))
            self.head = nn.Linear(config.hidden + config.embed, chunk)
            nn.init.normal_(self.head.weight, std=config.init_scale / math.sqrt(config.hidden + config.embed))
            nn.init.zeros_(self.head.bias)

    def code(self, x: torch.Tensor) -> torch.Tensor:
        """z = post(mean_i encoder(x_i)): (n, d) -> (h,)."""
        return self.post(self.encoder(x.reshape(x.shape[0], -1)).mean(dim=0))

    def flat_weights(self, x: torch.Tensor) -> torch.Tensor:
        """theta = H(x) as one vector of P entries."""
        z = self.code(x)
        if self.config.head == "linear":
            return torch.cat([head(z) for head in self.heads])
        chunks = self.embeddings.shape[0]
        inputs = torch.cat([z.expand(chunks, -1), self.embeddings], dim=1)  # (C, h + e)
        return self.base + self.head(inputs).reshape(-1)[: self.base.numel()]

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: part.reshape(shape) for name, part, shape
                in zip(self.names, torch.split(theta, self.numels), self.shapes)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.unflatten(self.flat_weights(x))

    def run_target(self, weights: dict[str, torch.Tensor], *args, **kwargs):
        """Call the target with `weights` in place of its parameters; its buffers stay its own."""
        return functional_call(self.target, weights, args, kwargs)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

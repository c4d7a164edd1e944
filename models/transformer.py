"""A small decoder-only transformer (GPT) over sequences of L tokens, as a `Generative`.

A sequence is given either as L token ids (L,) or as L one-hot rows (L, V): the stored data are
ids, the samples of `rsample` one-hot rows whose gradient reaches the weights. The model reads
[BOS, x_1 .. x_(L-1)] (token embeddings E one_hot(x) + learned positions, a learned BOS vector),
runs `layers` pre-norm blocks (causal multi-head self-attention, then a GELU MLP, each added to its
input) and a final layer norm, and predicts x_t from the logits W h_t + c at every position
(GPT-2's layout with nanoGPT's bias=False: c is the only bias; weights initialised N(0, 0.02^2)):

    nll(x)  = -(1/L) sum_t log softmax(logits_t)[x_t]            (mean over sequences too)
    draw:     x_t = argmax(logits_t / T + g_t),  g_t ~ Gumbel(0, 1)^V,  t = 1..L

an exact draw of softmax(logits_t / T), position by position with the attention keys and values of
earlier positions cached: the temperature T is the loop's sampling bias. `rsample` returns the drawn
tokens as straight-through Gumbel-softmax picks (as the mixture's component in models/gmm.py):
forward the one-hot rows, backward the gradient of soft_t = softmax((logits_t / T + g_t) / tau),
computed in one pass over the drawn sequence, so the PLE penalty reaches the weights through every
token's tempered softmax given the prefix drawn (the prefix itself is not differentiated).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.ple import Generative


@dataclass(frozen=True)
class TransformerConfig:
    width: int = 32  # d_model (nanoGPT's n_embd)
    layers: int = 2  # blocks (n_layer)
    heads: int = 2  # attention heads (n_head); width is a multiple of it
    hidden: int = 64  # width of each block's MLP (GPT: 4 x width)
    tau: float = 0.5  # temperature of the straight-through Gumbel-softmax relaxation


PRESETS = {
    "small": TransformerConfig(),  # CPU: 19,040 weights at V = 32, L = 12
    "gpu": TransformerConfig(width=384, layers=6, heads=6, hidden=1536),  # nanoGPT's shakespeare_char: 10.7M
}

Cache = tuple[torch.Tensor, torch.Tensor]


def one_hot(x: torch.Tensor, vocab: int) -> torch.Tensor:
    """Sequences as one-hot rows (n, L, V): token ids (n, L) (any dtype) encoded, one-hot rows as they are."""
    return x if x.dim() == 3 else F.one_hot(x.long(), vocab).float()


class Block(nn.Module):
    """x + attention(norm(x)), then x + MLP(norm(x)); keys and values of earlier positions in `cache`."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.heads = config.heads
        self.norm1, self.norm2 = nn.LayerNorm(config.width, bias=False), nn.LayerNorm(config.width, bias=False)
        self.qkv = nn.Linear(config.width, 3 * config.width, bias=False)
        self.proj = nn.Linear(config.width, config.width, bias=False)
        self.mlp = nn.Sequential(nn.Linear(config.width, config.hidden, bias=False), nn.GELU(),
                                 nn.Linear(config.hidden, config.width, bias=False))

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> tuple[torch.Tensor, Cache]:
        """x (n, t, width) after `cache` (keys, values (n, heads, t0, width / heads)): (output, cache + x's)."""
        n, t, width = x.shape
        q, k, v = (part.reshape(n, t, self.heads, -1).transpose(1, 2)
                   for part in self.qkv(self.norm1(x)).split(width, dim=-1))
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        seen = torch.ones(t, k.shape[2], dtype=torch.bool, device=x.device).tril(k.shape[2] - t)  # causal
        scores = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(~seen, -math.inf)
        x = x + self.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(n, t, width))
        return x + self.mlp(self.norm2(x)), (k, v)


class Transformer(Generative):
    """GPT over sequences of `length` tokens from a vocabulary of `vocab`."""

    def __init__(self, vocab: int, length: int, config: TransformerConfig = TransformerConfig()):
        super().__init__()
        if config.width % config.heads:
            raise ValueError(f"width {config.width} is not a multiple of heads {config.heads}")
        self.vocab, self.length, self.tau = vocab, length, config.tau
        self.token = nn.Parameter(0.02 * torch.randn(vocab, config.width))
        self.position = nn.Parameter(0.02 * torch.randn(length, config.width))
        self.bos = nn.Parameter(0.02 * torch.randn(config.width))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.width, bias=False)
        self.head = nn.Linear(config.width, vocab)
        for module in self.modules():  # GPT-2's initialisation: weights N(0, 0.02^2), the logits' bias 0
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (n, L, V) of x_t given x_<t at every position, x ids (n, L) or one-hot (n, L, V)."""
        hot = one_hot(x, self.vocab)
        n, length = hot.shape[:2]
        h = torch.cat([self.bos.expand(n, 1, -1), hot[:, :-1] @ self.token], dim=1) + self.position[:length]
        for block in self.blocks:
            h, _ = block(h)
        return self.head(self.norm(h))

    def token_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x_t | x_<t) at every position: (n, L)."""
        return (one_hot(x, self.vocab) * self.logits(x).log_softmax(-1)).sum(-1)

    def token_mass(self, x: torch.Tensor) -> torch.Tensor:
        """sum over sequences and positions of p(. | x_<t): (V,), the model's unigram times n L."""
        return self.logits(x).softmax(-1).sum((0, 1))

    def nll(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return -self.token_log_probs(x).mean()

    def noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Gumbel(0, 1) draws (n, L, V), one per token choice."""
        u = torch.rand(n, self.length, self.vocab, generator=generator).clamp(1e-10, 1 - 1e-10)
        return -(-u.log()).log()

    def draw(self, noise: torch.Tensor, sampling_bias: float = 1.0) -> torch.Tensor:
        """Token ids (n, L): x_t = argmax(logits_t / T + g_t), one position at a time, earlier positions'
        keys and values cached; not differentiable."""
        n = noise.shape[0]
        h, caches, tokens = self.bos.expand(n, 1, -1), [None] * len(self.blocks), []
        with torch.no_grad():
            for t in range(noise.shape[1]):
                h = h + self.position[t]
                for i, block in enumerate(self.blocks):
                    h, caches[i] = block(h, caches[i])
                tokens.append((self.head(self.norm(h[:, -1])) / sampling_bias + noise[:, t]).argmax(-1))
                h = self.token[tokens[-1]][:, None]
        return torch.stack(tokens, dim=1)

    def rsample(self, noise: torch.Tensor, sampling_bias: float = 1.0) -> torch.Tensor:
        """One-hot samples (n, L, V) at temperature T = sampling_bias: the tokens of `draw`, with the
        straight-through gradient of softmax((logits_t / T + g_t) / tau) given the drawn prefix."""
        tokens = self.draw(noise, sampling_bias)
        soft = F.softmax((self.logits(tokens) / sampling_bias + noise) / self.tau, dim=-1)
        return one_hot(tokens, self.vocab) + (soft - soft.detach())  # exactly one-hot forward

    def summary_features(self, x: torch.Tensor) -> torch.Tensor:
        """What a hypernetwork reads of a sequence: which tokens it holds, max_t one_hot(x_t) (n, V). Pooled over a
        dataset: the share of its sequences holding each token (from token frequencies, whose rare entries move
        by a few thousandths between datasets, H learned no response to the tail)."""
        return one_hot(x, self.vocab).amax(1)

"""The language metrics (docs/metrics.md), per seed, for S models given as stacked weights {name: (S, ...)}.

With q_s(x_t | x_<t) the model of seed s, p the corpus's reference unigram and R its rare tokens:

    perplexity  = exp(CE),  CE = (1/M) sum_i c_i,  c_i = -(1/L) sum_t log q_s(x_it | x_i<t)
                  over M fixed held-out sequences x_i of the corpus; its Monte Carlo standard error
                  perplexity * std_i(c_i) / sqrt(M) (delta method)
    q_s(v)      = (1/(M L)) sum_i sum_t q_s(v | y_i<t) over M sequences y_i sampled from the model: the
                  model's unigram, each sampled position's whole predictive distribution (never 0)
    kl_unigram  = KL(p || q_s) = sum_v p(v) log(p(v) / q_s(v))
    tail_mass   = q_s(R) = sum_(v in R) q_s(v)
    distinct_n  = distinct n-grams / all n-grams of the M sampled sequences (n-grams within a sequence)
"""

from __future__ import annotations

import torch
from torch.func import functional_call, vmap

from models.transformer import Transformer

CHUNK_VALUES = 2**22


def chunk_size(seeds: int, length: int, vocab: int) -> int:
    """Sequences per chunk: at most CHUNK_VALUES logits (seeds x chunk x L x V) at once."""
    return max(1, CHUNK_VALUES // (seeds * length * vocab))


def _chunks(target: Transformer, seeds: int, count: int) -> list[slice]:
    size = chunk_size(seeds, target.length, target.vocab)
    return [slice(start, start + size) for start in range(0, count, size)]


def _call(target: Transformer, op: str, shared: bool):
    """op of every seed's model on shared sequences (M, L) or on each seed's own (S, M, L)."""
    return vmap(lambda w, x: functional_call(target, w, (x,), {"op": op}), in_dims=(0, None if shared else 0))


def token_log_probs(target: Transformer, weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """log q_s(x_t | x_<t) of every seed's model for the shared sequences x (M, L): (S, M, L) float64."""
    seeds, device = next(iter(weights.values())).shape[0], next(iter(weights.values())).device
    run = _call(target, "token_log_probs", shared=True)
    with torch.no_grad():
        return torch.cat([run(weights, x[part].to(device)).double().cpu()
                          for part in _chunks(target, seeds, len(x))], dim=1)


def model_unigram(target: Transformer, weights: dict[str, torch.Tensor], samples: torch.Tensor) -> torch.Tensor:
    """q_s (S, V) float64 from each seed's own samples (S, M, L)."""
    seeds, count = samples.shape[:2]
    device = next(iter(weights.values())).device
    run = _call(target, "token_mass", shared=False)
    with torch.no_grad():
        mass = sum(run(weights, samples[:, part].to(device)).double().cpu()
                   for part in _chunks(target, seeds, count))
    return mass / (count * samples.shape[2])


def perplexity(log_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(perplexity, its Monte Carlo standard error) per seed from log-probabilities (S, M, L)."""
    per_sequence = -log_probs.mean(-1)  # c_i (S, M)
    value = per_sequence.mean(-1).exp()
    return value, value * per_sequence.std(-1) / per_sequence.shape[-1] ** 0.5


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q_s) per seed: p (V,), q (S, V)."""
    return (torch.special.xlogy(p, p) - torch.special.xlogy(p, q)).sum(-1)


def tail_mass(q: torch.Tensor, rare: torch.Tensor) -> torch.Tensor:
    """q_s(R) per seed: q (S, V)."""
    return q[:, rare].sum(-1)


def distinct(samples: torch.Tensor, n: int, vocab: int) -> torch.Tensor:
    """distinct-n of every seed's sequences (S, M, L): (S,) float64."""
    length = samples.shape[-1] - n + 1
    codes = sum(samples[..., k: k + length].long() * vocab ** (n - 1 - k) for k in range(n))  # (S, M, length)
    return torch.tensor([float(c.unique().numel()) for c in codes], dtype=torch.float64) / codes[0].numel()

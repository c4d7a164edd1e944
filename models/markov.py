"""A text source whose probabilities are known: an order-1 Markov chain over a Zipf-like vocabulary.

Built from a seed: with the Zipf weights pi_j = j^-s / sum_k k^-s (j = 1..V) and random token
vectors a_i, b_j ~ N(0, I_r),

    P(x_t = j | x_(t-1) = i) = softmax_j( log pi_j + beta <a_i, b_j> / sqrt(r) ),

a low-rank log-linear chain: pi sets how common each token is, beta how much the previous token
matters. Its stationary distribution mu (mu P = mu, solved exactly) is the true unigram
distribution; tokens are numbered by decreasing mu. A sequence starts at stationarity, x_1 ~ mu, so
every position has the marginal mu, and

    log p(x_1..x_L) = log mu(x_1) + sum_(t>1) log P(x_t | x_(t-1))
    h   = -sum_i mu_i sum_j P_ij log P_ij                 (entropy rate, nats per token)
    H_L = ( H(mu) + (L - 1) h ) / L                        (entropy per token of a sequence of length L)

exp(H_L) is the lowest perplexity any model of length-L sequences can reach on the source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def stationary(transition: torch.Tensor) -> torch.Tensor:
    """mu with mu P = mu and sum mu = 1, by solving (P^T - I) mu = 0 with one equation replaced by the sum."""
    v = transition.shape[0]
    system = transition.T - torch.eye(v, dtype=transition.dtype)
    system[-1] = 1.0
    rhs = torch.zeros(v, dtype=transition.dtype)
    rhs[-1] = 1.0
    return torch.linalg.solve(system, rhs)


def entropy(p: torch.Tensor) -> torch.Tensor:
    """-sum p log p over the last axis (0 log 0 = 0), in nats."""
    return -torch.special.xlogy(p, p).sum(-1)


@dataclass(frozen=True)
class MarkovSource:
    """transition (V, V) float64, rows summing to 1, with a unique stationary distribution."""

    transition: torch.Tensor

    @classmethod
    def zipf(cls, vocab: int, exponent: float, rank: int, strength: float, seed: int) -> MarkovSource:
        """The chain of the module docstring, tokens renumbered by decreasing stationary probability."""
        g = torch.Generator().manual_seed(seed)
        pi = torch.arange(1, vocab + 1, dtype=torch.float64) ** -exponent
        a, b = (torch.randn(vocab, rank, generator=g, dtype=torch.float64) for _ in range(2))
        transition = torch.softmax((pi / pi.sum()).log() + strength * a @ b.T / math.sqrt(rank), dim=1)
        order = stationary(transition).argsort(descending=True)
        return cls(transition[order][:, order])

    @property
    def vocab(self) -> int:
        return self.transition.shape[0]

    @property
    def unigram(self) -> torch.Tensor:
        """The stationary distribution mu (V,): the true unigram distribution at every position."""
        return stationary(self.transition)

    def entropy_rate(self) -> float:
        """h = sum_i mu_i H(P_i.), nats per token."""
        return float((self.unigram * entropy(self.transition)).sum())

    def sequence_entropy(self, length: int) -> float:
        """H_L = (H(mu) + (L - 1) h) / L, nats per token of a sequence of `length` tokens."""
        return (float(entropy(self.unigram)) + (length - 1) * self.entropy_rate()) / length

    def sample(self, count: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """`count` sequences (count, length) of token ids (int64), x_1 ~ mu, then the chain."""
        tokens = [torch.multinomial(self.unigram.expand(count, -1), 1, generator=generator)[:, 0]]
        for _ in range(length - 1):
            tokens.append(torch.multinomial(self.transition[tokens[-1]], 1, generator=generator)[:, 0])
        return torch.stack(tokens, dim=1)

    def token_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x_t | x_(t-1)) for every position of x (..., L); log mu(x_1) at the first: (..., L)."""
        first = self.unigram.log()[x[..., :1]]
        return torch.cat([first, self.transition.log()[x[..., :-1], x[..., 1:]]], dim=-1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x_1..x_L) of every sequence of x (..., L): (...)."""
        return self.token_log_probs(x).sum(-1)

    def tilted(self, tokens: torch.Tensor, factor: float) -> MarkovSource:
        """The chain with every transition into `tokens` made `factor` times as likely (rows renormalised)."""
        weight = torch.ones(self.vocab, dtype=self.transition.dtype)
        weight[tokens] = factor
        moved = self.transition * weight
        return MarkovSource(moved / moved.sum(1, keepdim=True))

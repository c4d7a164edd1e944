"""Curation: a verifier reads every synthetic candidate before the loop reuses it (docs/loop.md, Curation).

A study that can verify (`Verifiable`) scores each candidate x with s(x) in [0, 1] (1: surely good) and
reads it as one of its groups (a class, a mixture component). Per seed, with n the points the loop needs:

- verifier (Feng et al. 2024): draw rounds of n candidates until n are accepted, a candidate accepted when
  s(x) >= threshold; keep the first n accepted in draw order;
- top_k (Feng et al.'s selection from a larger pool): draw m = ceil(n / keep) candidates, keep the n of
  highest s(x) (ties: the earlier drawn) in draw order.

A biased verifier (after Qiao et al.: a verifier whose view of the data is biased precipitates collapse)
also rejects each candidate it reads as a group other than `favour` with probability `bias`. A rejected
candidate is never accepted by `verifier`, and `top_k` ranks it below every other.

Statistics per seed, over all D candidates drawn for it (D = rounds * n, or m):
    kept_share         = A / D, A the candidates accepted (top_k: kept, so exactly n / m)
    kept_share_<group> = A_group / D_group, NaN when no candidate of the group was drawn.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from models.distributions import Family, TwoGaussians, draw_true, true_report
from tasks.errors import ParamsError
from tasks.params import CurationParams

REFERENCE_DRAWS = 4096  # M: true draws behind a density quantile
REFERENCE_SEED = 0  # their torch seed, the same for every study, seed and generation


@dataclass(frozen=True)
class Scores:
    """A verifier's reading of candidates: score (S, N) in [0, 1] (1: surely good), group (S, N) long indices
    into names."""

    score: torch.Tensor
    group: torch.Tensor
    names: tuple[str, ...]


@runtime_checkable
class Verifiable(Protocol):
    """A study whose synthetic candidates can be verified."""

    verifier_groups: tuple[str, ...]  # the group names its scores use

    def verify(self, values: torch.Tensor) -> Scores:
        """Scores of candidates `values` (S, N, *event) as the loop stores them."""


def density_quantile(log_density: Callable[[torch.Tensor], torch.Tensor],
                     draw_true: Callable[[int, torch.Generator], torch.Tensor], values: torch.Tensor) -> torch.Tensor:
    """F(p(x)) = P_{X ~ p}(p(X) <= p(x)), estimated as #{j : p(X_j) <= p(x)} / M over M = REFERENCE_DRAWS true
    draws X_j (torch seed REFERENCE_SEED): `draw_true(M, generator)` gives (1, M, *event), `log_density`
    maps (S, N, *event) to log p (S, N). A score >= t rejects about the t least typical share of true data;
    a point of density 0 scores 0."""
    draws = draw_true(REFERENCE_DRAWS, torch.Generator().manual_seed(REFERENCE_SEED))
    reference = log_density(draws).flatten().sort().values
    return torch.searchsorted(reference, log_density(values).contiguous(), right=True).double() / len(reference)


def pool_size(n: int, keep: float) -> int:
    """m = ceil(n / keep), the candidates top_k draws per seed (n / keep within 1e-9 of an integer counts as it:
    3 / 0.3 is 10, not 11)."""
    return math.ceil(n / keep - 1e-9)


def curate(draw: Callable[[int, int], torch.Tensor], verifier: Verifiable, settings: CurationParams, n: int,
           generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(S, n, *event) kept samples and per-seed stats {"kept_share": (S,), "kept_share_<group>": (S,) ...}.

    `draw(m, round)` gives (S, m, *event) fresh candidates of round 0, 1, ...; the bias draws its uniforms
    from `generator` (`favour` is one of the verifier's groups: `tasks.studies.base.StudySpec.studies` checks
    it before a run). ParamsError when after max_rounds rounds some seed has fewer than n accepted."""
    if settings.kind == "top_k":
        values, score, group, names = _read(draw(pool_size(n, settings.keep), 0), verifier, settings, generator)
        chosen = _first_best(score, n)
        accepted = torch.zeros_like(score, dtype=torch.bool).scatter(1, chosen, True)
        return _take(values, chosen), _stats(accepted, group, names)
    values, accepted, groups = [], [], []
    while not accepted or torch.cat(accepted, 1).sum(1).min() < n:
        if len(accepted) == settings.max_rounds:
            raise _too_few(torch.cat(accepted, 1), n, settings)
        batch, score, group, names = _read(draw(n, len(accepted)), verifier, settings, generator)
        values.append(batch)
        accepted.append(score >= settings.threshold)
        groups.append(group)
    accepted = torch.cat(accepted, 1)
    return _take(torch.cat(values, 1), _first_best(accepted.double(), n)), _stats(accepted, torch.cat(groups, 1),
                                                                                  names)


def _read(values: torch.Tensor, verifier: Verifiable, settings: CurationParams,
          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """(values, score, group, names) of candidates: the verifier's scores, -1 where the bias rejects one."""
    scores = verifier.verify(values)
    score = scores.score.double()
    if settings.bias > 0:
        other = scores.group != scores.names.index(settings.favour)
        rejected = other & (torch.rand(score.shape, generator=generator, dtype=torch.float64) < settings.bias)
        score = torch.where(rejected, -1.0, score)
    return values, score, scores.group, scores.names


def _first_best(key: torch.Tensor, n: int) -> torch.Tensor:
    """(S, n) indices of the n largest keys (S, D) of each seed, ties to the earlier, in draw order."""
    return key.argsort(dim=1, descending=True, stable=True)[:, :n].sort(dim=1).values


def _take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (S, D, *event) at index (S, n): (S, n, *event)."""
    return values[torch.arange(len(values))[:, None], index]


def _stats(accepted: torch.Tensor, group: torch.Tensor, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """kept_share and kept_share_<group> per seed from accepted (S, D) and group (S, D) of every candidate drawn."""
    drawn = torch.nn.functional.one_hot(group, len(names)).double()  # (S, D, groups)
    per_group = (drawn * accepted[..., None]).sum(1) / drawn.sum(1)  # 0 / 0 = NaN: none of the group drawn
    return {"kept_share": accepted.double().mean(1),
            **{f"kept_share_{name}": per_group[:, k] for k, name in enumerate(names)}}


def _too_few(accepted: torch.Tensor, n: int, settings: CurationParams) -> ParamsError:
    """The one-line error when the seed with the fewest accepted candidates (S, D) still has fewer than n."""
    counts = accepted.sum(1)
    seed = int(counts.argmin())
    share = float(accepted[seed].double().mean())
    return ParamsError(
        f"loop.curation: after max_rounds = {settings.max_rounds} rounds of {n} candidates, seed {seed} has "
        f"{int(counts[seed])} of the {n} points it needs accepted (kept share {share:.3g} at threshold "
        f"{settings.threshold}, bias {settings.bias}); lower loop.curation.threshold or "
        f"loop.curation.bias, or raise loop.curation.max_rounds")


def true_density_scores(family: Family | TwoGaussians, x: torch.Tensor) -> Scores:
    """Verifier scores of points x (S, n, 1) under a `models.distributions` family's true law p: the density
    quantile F(p(x)), every point in the one group "all"."""
    truth = true_report(family, 1)
    score = density_quantile(lambda v: family.log_prob(truth, v), lambda m, g: draw_true(family, 1, m, g), x.double())
    return Scores(score, torch.zeros(score.shape, dtype=torch.long), ("all",))

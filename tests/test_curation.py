"""Curation of synthetic samples: `tasks.curation.curate` on a toy verifier, and each study's scorer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from models.classifier import train_classifier
from models.distributions import FAMILIES, true_report
from tasks.curation import Scores, Verifiable, curate, pool_size
from tasks.params import CurationParams
from tasks.errors import ParamsError
from tasks.loop import GridPoint, generator
from tasks.studies import load_params
from tasks.studies.fairness import attributes as ad
from tasks.studies.fairness import study as fairness
from tasks.studies.gaussian import GaussianParams, GaussianStudy
from tasks.studies.gmm.study import GMMStudy
from tasks.studies.grid import FamilyStudy
from tasks.studies.images.data import load_images, split, with_channels
from tasks.studies.images.params import ImageParams
from tasks.studies.images.study import ImageStudy

from conftest import ROOT, write_params


class Table:
    """A test double of a verifiable study: candidate (score, group, round, index) rows, read back as they are;
    round r of `draw` returns the scores[r] and groups[r] of every seed, and the calls are recorded."""

    verifier_groups = ("a", "b")

    def __init__(self, scores: list, groups: list):
        self.scores, self.groups, self.calls = torch.tensor(scores, dtype=torch.float64), torch.tensor(groups), []

    def draw(self, m: int, round_: int) -> torch.Tensor:
        self.calls.append((m, round_))
        seeds = self.scores.shape[1]
        index = torch.arange(m, dtype=torch.float64).expand(seeds, -1)
        return torch.stack([self.scores[round_, :, :m], self.groups[round_, :, :m].double(),
                            torch.full_like(index, round_), index], -1)

    def verify(self, values: torch.Tensor) -> Scores:
        return Scores(values[..., 0], values[..., 1].long(), self.verifier_groups)


# two rounds of 4 candidates for 2 seeds; threshold 0.5 accepts seed 0: (0, 2) then (1, 2, 3), seed 1: all of round 0
ROUNDS = Table(scores=[[[0.9, 0.1, 0.5, 0.49], [0.6, 0.6, 0.6, 0.6]], [[0.2, 0.7, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0]]],
               groups=[[[0, 1, 0, 1], [0, 0, 0, 0]], [[1, 1, 0, 0], [0, 0, 0, 0]]])


def keys(kept: torch.Tensor) -> list[list[tuple[int, int]]]:
    """(round, index) of every kept candidate, per seed."""
    return [[(int(r), int(i)) for r, i in seed[:, 2:].tolist()] for seed in kept]


def test_verifier_keeps_the_first_n_accepted_in_draw_order_and_counts_every_candidate_drawn():
    table = Table(ROUNDS.scores.tolist(), ROUNDS.groups.tolist())
    kept, stats = curate(table.draw, table, CurationParams(kind="verifier", threshold=0.5), 4, torch.Generator())
    assert table.calls == [(4, 0), (4, 1)]  # seed 0 needs a second round, then both seeds have 4
    assert keys(kept) == [[(0, 0), (0, 2), (1, 1), (1, 2)], [(0, 0), (0, 1), (0, 2), (0, 3)]]
    assert (kept[..., 0] >= 0.5).all()
    torch.testing.assert_close(stats["kept_share"], torch.tensor([5 / 8, 4 / 8], dtype=torch.float64))
    torch.testing.assert_close(stats["kept_share_a"], torch.tensor([4 / 4, 4 / 8], dtype=torch.float64))
    assert stats["kept_share_b"][0] == 1 / 4 and math.isnan(stats["kept_share_b"][1])  # seed 1 drew no b
    assert set(stats) == {"kept_share", "kept_share_a", "kept_share_b"}


def test_exhausted_rounds_stop_with_one_line_naming_the_kept_share_and_the_fix():
    table = Table(ROUNDS.scores.tolist(), ROUNDS.groups.tolist())
    with pytest.raises(ParamsError) as error:
        curate(table.draw, table, CurationParams(kind="verifier", threshold=0.5, max_rounds=1), 4, torch.Generator())
    message = str(error.value)
    assert "\n" not in message and "seed 0 has 2 of the 4" in message and "kept share 0.5 " in message
    assert "lower loop.curation.threshold or loop.curation.bias, or raise loop.curation.max_rounds" in message
    assert table.calls == [(4, 0)]


def test_top_k_keeps_the_n_best_of_the_pool_in_draw_order():
    table = Table(scores=[[[0.1, 0.8, 0.3, 0.95, 0.2, 0.9, 0.0, 0.5], [0.5] * 8]], groups=[[[0, 1] * 4, [0] * 8]])
    kept, stats = curate(table.draw, table, CurationParams(kind="top_k", keep=0.4), 3, torch.Generator())
    assert table.calls == [(8, 0)]  # ceil(3 / 0.4) candidates, one round
    assert keys(kept) == [[(0, 1), (0, 3), (0, 5)], [(0, 0), (0, 1), (0, 2)]]  # ties: the earlier drawn
    torch.testing.assert_close(stats["kept_share"], torch.full((2,), 3 / 8, dtype=torch.float64))
    assert stats["kept_share_a"][0] == 0 and stats["kept_share_b"][0] == 3 / 4  # the b's at 1, 3, 5 of 1, 3, 5, 7
    assert pool_size(3, 0.3) == 10 and pool_size(7, 0.5) == 14 and pool_size(5, 1.0) == 5


def test_the_biased_verifier_rejects_the_other_groups_at_the_bias_rate_reproducibly():
    n, bias = 4000, 0.3
    everything = Table(scores=[[[1.0] * n] * 2] * 3, groups=[[[0, 1] * (n // 2)] * 2] * 3)
    settings = CurationParams(kind="verifier", threshold=0.0, favour="a", bias=bias)
    kept, stats = curate(everything.draw, everything, settings, n, torch.Generator().manual_seed(1))
    assert (stats["kept_share_a"] == 1).all()  # the favoured group is never rejected
    drawn_b = len(everything.calls) * n / 2
    se = math.sqrt(bias * (1 - bias) / drawn_b)
    assert ((stats["kept_share_b"] - (1 - bias)).abs() < 4 * se).all(), stats["kept_share_b"]
    again, _ = curate(everything.draw, everything, settings, n, torch.Generator().manual_seed(1))
    assert torch.equal(kept, again)
    best, _ = curate(everything.draw, everything, settings.model_copy(update={"kind": "top_k", "bias": 1.0}), n // 2,
                     torch.Generator())  # top_k ranks every rejected candidate last: only a's are kept
    assert (best[..., 1] == 0).all()


def test_settings_refuse_a_bias_without_favour():
    with pytest.raises(ValidationError, match="bias > 0 needs favour"):
        CurationParams(kind="verifier", bias=0.5)


def gmm_study() -> GMMStudy:
    """The shipped gmm section at weight 0.8: 0.8 N(0, 1) + 0.2 N(2, 1)."""
    params = load_params(ROOT / "params.yaml").gmm
    return GMMStudy(params, 0.8, 50, params.ple.lam, GridPoint({"weight": 0.8, "n_samples": 50}))


def test_gmm_scores_the_density_quantile_and_reads_the_most_probable_component():
    study = gmm_study()
    x = torch.tensor([0.0, 1.0, 1.5, 2.0, 3.0, 8.0, -5.0], dtype=torch.float64).view(1, -1, 1)
    x = x.expand(study.seeds, -1, -1)
    scores = study.verify(x)
    assert isinstance(study, Verifiable) and scores.names == study.verifier_groups == ("1", "2")
    truth = study.truth()
    true_draws = truth.sample(200_000, 1.0, torch.Generator().manual_seed(5))[:1]  # not the verifier's draws
    expected = (truth.log_prob(true_draws)[0, :, None] <= truth.log_prob(x)[0]).double().mean(0)
    assert (scores.score - expected).abs().max() < 0.03  # 4096 reference draws: SE <= 0.008
    assert scores.score[0, 0] > 0.9 and scores.score[0, 5] == 0  # the majority mean; far in the tail
    # the posterior 0.8 N(x; 0, 1) vs 0.2 N(x; 2, 1) favours component 2 from x = 1 + log(4) / 2 = 1.69 up
    assert scores.group[0].tolist() == [0, 0, 0, 1, 1, 1, 0]
    # a score >= t rejects about the t least typical share of true data
    share = (study.verify(truth.sample(4000, 1.0, torch.Generator().manual_seed(6))).score < 0.3).double().mean()
    assert abs(share - 0.3) < 0.04


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_log_densities_are_the_true_laws(name):
    family = FAMILIES[name]()
    x = torch.linspace(-3, 5, 33, dtype=torch.float64).view(1, -1, 1)
    laws = {"normal": torch.distributions.Normal(0.0, 1.0), "exponential": torch.distributions.Exponential(1.0),
            "laplace": torch.distributions.Laplace(0.0, 1.0)}
    support = {"uniform": (x >= 0) & (x <= 1), "exponential": x >= 0}
    inside = support.get(name, torch.ones_like(x, dtype=torch.bool))
    if name == "mixture":
        normal = torch.distributions.Normal(torch.tensor([0.0, 2.0], dtype=torch.float64), 1.0)
        expected = torch.logsumexp(normal.log_prob(x) + torch.tensor([0.8, 0.2], dtype=torch.float64).log(), -1)
    elif name == "uniform":
        expected = torch.zeros_like(x[..., 0])
    else:
        expected = laws[name].log_prob(x.clamp_min(0) if name == "exponential" else x)[..., 0]
    expected = torch.where(inside[..., 0], expected.double(), -math.inf)
    torch.testing.assert_close(family.log_prob(true_report(family, 1), x), expected)


@pytest.mark.parametrize("name, tail", [("normal", lambda x: 2 * torch.special.ndtr(-x.abs())),
                                        ("exponential", lambda x: (-x).exp()),
                                        ("laplace", lambda x: (-x.abs()).exp())])
def test_grid_scores_are_the_probability_of_a_less_likely_true_draw(name, tail):
    """F(p(x)) in closed form: P(|X| >= |x|) for the normal and the Laplace law, P(X >= x) for Exp(1)."""
    study = FamilyStudy(load_params(ROOT / "params.yaml").grid, name)
    x = torch.tensor([0.0, 0.3, 1.0, 2.0, 3.5], dtype=torch.float64).view(1, -1, 1).expand(study.seeds, -1, -1)
    scores = study.verify(x)
    assert (scores.score - tail(x[..., 0])).abs().max() < 0.03 and scores.names == ("all",)
    assert (scores.group == 0).all()


def test_uniform_laws_score_one_on_their_support_and_zero_off_it():
    x = torch.tensor([[-0.1, 0.0, 0.3, 0.99, 1.0, 1.2]], dtype=torch.float64)
    gaussian = GaussianStudy(GaussianParams(distribution="uniform", n_samples=10, generations=2, seeds=1))
    grid = FamilyStudy(load_params(ROOT / "params.yaml").grid, "uniform")
    for scores in gaussian.verify(x), grid.verify(x[..., None].expand(grid.seeds, -1, -1)):
        assert (scores.score == torch.tensor([0, 1, 1, 1, 1, 0], dtype=torch.float64)).all()
    normal = GaussianStudy(GaussianParams(distribution="normal", n_samples=10, generations=2, seeds=1))
    assert (normal.verify(x).score - 2 * torch.special.ndtr(-x.abs())).abs().max() < 0.03


@pytest.fixture(scope="module")
def digits_study() -> ImageStudy:
    """The digits study (3 and 6 at 9:1) with a small reference classifier of ten digits trained, for speed, on the
    training images of 0, 3 and 6 only."""
    train, test = split(load_images("digits", Path("unused")), 0.3, generator(0, "split", "digits"))
    few = train.subset(torch.isin(train.labels, torch.tensor([0, 3, 6])))
    classifier = train_classifier(with_channels(few.images), few.labels, 10, epochs=4, batch_size=32, lr=0.01,
                                  generator=torch.Generator().manual_seed(0), device=torch.device("cpu"), features=16)
    params = ImageParams(dataset="digits", classes=[3, 6], proportions=[0.9, 0.1], n_samples=60, generations=1,
                         seeds=2)
    return ImageStudy(params, "digits", train, test, classifier, "", None, torch.device("cpu"))


def test_image_scores_are_the_classifier_confidence_and_groups_its_label(digits_study):
    """Held-out images: seed 0 of each class, seed 1 of the next class (3, 6 and 0, a digit outside the study)."""
    test = digits_study.reference
    size = min(int((test.labels == c).sum()) for c in (3, 6, 0))
    of = lambda c: test.images[test.labels == c][:size]  # noqa: E731
    values = torch.stack([torch.cat([of(3), of(6), of(0)]), torch.cat([of(6), of(0), of(3)])])
    scores = digits_study.verify(values)
    assert isinstance(digits_study, Verifiable) and scores.names == ("3", "6", "other")
    assert scores.score.min() >= 1 / 10 and scores.score.max() <= 1 and scores.score.mean() > 0.8
    probabilities = torch.stack([digits_study.logits(images).softmax(-1) for images in values])
    torch.testing.assert_close(scores.score, probabilities.max(-1).values)
    labels = torch.stack([digits_study.predict(images) for images in values])
    expected = torch.where(labels == 3, 0, torch.where(labels == 6, 1, 2))
    assert torch.equal(scores.group, expected)
    truth = torch.tensor([[0] * size + [1] * size + [2] * size, [1] * size + [2] * size + [0] * size])
    assert (scores.group == truth).double().mean() > 0.85


def test_fairness_scores_the_probability_of_the_rows_own_label(tmp_path):
    """The same real rows for both seeds: each seed's own pre-trained classifier scores them (the scores
    differ), flipping y turns each score s into 1 - s, and the group is 2 y + s."""
    tiny = {"n_samples": 80, "generations": 1, "seeds": 2,
            "downstream": {"features": 8, "epochs": 5, "batch_size": 32}}
    study, = fairness.build(load_params(write_params(tmp_path, fairness=tiny)), ROOT)
    groups = ad.draw_biased(study.train, study.params.threshold, 0.5, 80, torch.Generator().manual_seed(3))
    rows = torch.stack([ad.to_rows(groups)] * 2)
    scores = study.verify(rows)
    assert scores.names == ("y0_s0", "y0_s1", "y1_s0", "y1_s1")
    assert torch.equal(scores.group, (2 * groups.y + groups.s).expand(2, -1))
    assert not torch.equal(scores.score[0], scores.score[1])
    flipped = rows.clone()
    flipped[..., -1] = 1 - flipped[..., -1]
    torch.testing.assert_close(study.verify(flipped).score, 1 - scores.score)

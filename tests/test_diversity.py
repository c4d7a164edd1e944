"""Density, coverage and the Vendi score (tasks/diversity.py) against the reference implementations (prdc,
vendi-score), hand-computed cases and their expectations when fake and real come from one distribution."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from prdc import compute_prdc
from vendi_score import vendi

from tasks import diversity
from tasks.diversity import KNNBalls, vendi_score
from tasks.studies.images.fid import precision_recall

# 1-D hand case, k = 2 (as in tests/test_fid.py): real radii (distance to the 2nd nearest other real) 3 2 3 4 7,
# balls [-3, 3] [-1, 3] [0, 6] [2, 10] [3, 17].
REAL, FAKE = np.array([[0.0], [1], [3], [6], [10]]), np.array([[-6.0], [-3], [-2], [-1]])


def reference_vendi(x: np.ndarray) -> float:
    """vendi-score's score_K on the cosine kernel (it reads scipy.sparse.csr, deprecated in scipy 1.14)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*scipy.sparse.csr.*", category=DeprecationWarning)
        return float(vendi.score_K(x @ x.T, normalize=True))


def test_density_and_coverage_by_hand_with_closed_balls():
    """Fakes -6, -3, -2, -1 lie in 0, 1 ([-3, 3], on its boundary), 1 and 2 ([-3, 3], [-1, 3] on its boundary)
    balls: density 4 / (k M) = 4 / 8. Balls holding a fake: [-3, 3] and [-1, 3]: coverage 2/5; over the reals
    1 and 3 only, 1/2. Off by one: k = 1 (radii 1 1 2 3 4) gives density 1/4 and coverage 1/5, k = 3
    (radii 6 5 3 5 9) density 7/12 (the radii of k = 3 with the 1/k of k = 2: 7/8); open balls give density
    2/8 and coverage 1/5."""
    balls = KNNBalls(REAL, 2)
    assert balls.radii.tolist() == [3, 2, 3, 4, 7]
    assert balls.density(FAKE) == 0.5
    assert balls.coverage(FAKE) == 0.4
    assert balls.coverage(FAKE, among=torch.tensor([False, True, True, False, False])) == 0.5
    assert KNNBalls(REAL[[3, 0, 4, 1, 2]], 2).density(FAKE[[2, 0, 3, 1]]) == 0.5  # in any order
    assert (KNNBalls(REAL, 1).density(FAKE), KNNBalls(REAL, 1).coverage(FAKE)) == (0.25, 0.2)
    assert KNNBalls(REAL, 3).density(FAKE) == 7 / 12


def test_density_of_a_set_against_itself_is_k_plus_one_over_k_and_its_coverage_one():
    """Each ball holds its centre and its k nearest neighbours: N (k + 1) memberships over k N points."""
    real = np.random.default_rng(0).normal(size=(200, 3))
    for k in (1, 3, 5):
        balls = KNNBalls(real, k)
        assert balls.density(real) == pytest.approx((k + 1) / k, abs=1e-12)
        assert balls.coverage(real) == 1.0
    assert KNNBalls(real, 5).coverage(real + 100) == 0.0 and KNNBalls(real, 5).density(real + 100) == 0.0


def test_fake_from_the_real_distribution_has_density_one_and_the_stated_coverage_in_expectation():
    """Naeem et al.: for fake and real i.i.d. from one distribution, a fresh fake lies in a real ball with
    probability k / N (its distance ranks uniformly among the N - 1 other reals), so E[density] = 1; a real
    point is uncovered when its k nearest of the other N - 1 + M points are all real:
    E[coverage] = 1 - C(N - 1, k) / C(N - 1 + M, k). Both within 3 SE over 200 repetitions (N = M = 100, k = 5):
    k + 1 neighbours would give E[density] 1.2 and E[coverage] 0.986, 39 and 11 SE away."""
    rng = np.random.default_rng(1)
    n, m, k, repetitions = 100, 100, 5, 200
    values = []
    for _ in range(repetitions):
        real, fake = rng.normal(size=(n, 4)), rng.normal(size=(m, 4))
        balls = KNNBalls(real, k)
        values.append((balls.density(fake), balls.coverage(fake)))
    mean, se = np.mean(values, axis=0), np.std(values, axis=0, ddof=1) / math.sqrt(repetitions)
    expected = (1.0, 1 - math.comb(n - 1, k) / math.comb(n - 1 + m, k))
    assert np.all(np.abs(mean - expected) < 3 * se), (mean, se, expected)
    assert se[0] < 0.008 and se[1] < 0.002  # measured 0.0052 and 0.0014: tight enough to see the errors above


def test_coverage_drops_when_the_samples_miss_a_mode():
    """Real: two far modes of 150 points; fake: 200 points of the first only. The second mode's balls hold no
    fake (its coverage 0), the first's nearly all: coverage about 1/2, while precision stays near 1."""
    rng = np.random.default_rng(2)
    modes = np.repeat([0, 1], 150)
    real = rng.normal(size=(300, 2)) + 50 * modes[:, None]
    fake = rng.normal(size=(200, 2))
    balls = KNNBalls(real, 5)
    second = torch.from_numpy(modes == 1)
    assert balls.coverage(fake, among=second) == 0.0
    assert balls.coverage(fake, among=~second) > 0.9
    assert 0.45 < balls.coverage(fake) <= 0.5
    assert balls.share_inside(fake) > 0.95
    assert KNNBalls(real, 5).coverage(np.concatenate([fake, real[modes == 1][:50]])) > 0.9


def test_density_coverage_precision_recall_equal_prdc_on_random_features():
    """prdc 0.2 (Naeem et al.'s code) on random features of several shapes: the same four numbers (counts of
    distance comparisons, so equal unless a distance ties a radius)."""
    rng = np.random.default_rng(3)
    worst = 0.0
    for n, m, d, k in ((300, 250, 8, 5), (120, 400, 32, 5), (200, 200, 2, 3), (50, 80, 16, 10)):
        real, fake = rng.normal(size=(n, d)), rng.normal(size=(m, d)) * 1.3 + 0.2
        theirs = compute_prdc(real, fake, nearest_k=k)
        balls = KNNBalls(real, k)
        ours = {"density": balls.density(fake), "coverage": balls.coverage(fake)}
        ours["precision"], ours["recall"] = precision_recall(real, fake, k=k)
        for name, value in ours.items():
            worst = max(worst, abs(value - theirs[name]))
        assert 0 < ours["coverage"] < 1 and ours["density"] != ours["precision"]  # nothing trivially equal
    assert worst < 1e-12, worst


def test_chunked_balls_equal_one_block(monkeypatch):
    """Queries a few at a time (the memory bound) give the numbers of a single block."""
    rng = np.random.default_rng(4)
    real, fake = rng.normal(size=(60, 3)), rng.normal(size=(70, 3))
    among = torch.from_numpy(rng.random(60) < 0.3)
    whole = KNNBalls(real, 5)
    expected = (whole.density(fake), whole.coverage(fake), whole.coverage(fake, among), whole.share_inside(fake))
    monkeypatch.setattr(diversity, "CDIST_ELEMENTS", 7 * 60)
    chunked = KNNBalls(real, 5)
    torch.testing.assert_close(chunked.radii, whole.radii, rtol=0, atol=0)
    assert (chunked.density(fake), chunked.coverage(fake), chunked.coverage(fake, among),
            chunked.share_inside(fake)) == expected


def test_balls_take_low_precision_features_in_float64_and_bound_k():
    balls = KNNBalls(REAL.astype(np.float32), 2)
    assert balls.radii.dtype == torch.float64 and balls.density(FAKE.astype(np.float16)) == 0.5
    for k in (0, 5):
        with pytest.raises(ValueError, match=f"k={k} for 5 samples"):
            KNNBalls(REAL, k)


def test_vendi_of_copies_is_one_of_orthogonal_points_n_and_by_hand_in_between():
    """Copies: K = 1 1^T, eigenvalues of K / n are 1, 0, ...: VS 1. Orthogonal: K = I, n eigenvalues 1/n: VS n.
    Three copies of e_1 and one e_2: eigenvalues 3/4, 1/4. Two unit vectors at cosine c: (1 +- c) / 2."""
    point = np.array([[0.3, -1.2, 2.0]])
    assert float(vendi_score(np.repeat(point, 7, axis=0))) == pytest.approx(1.0, abs=1e-12)
    assert float(vendi_score(np.repeat(point, 2, axis=0) * [[1.0], [5.0]])) == pytest.approx(1.0, abs=1e-12)
    for n in (1, 4, 10):
        assert float(vendi_score(np.eye(n) * np.arange(1, n + 1)[:, None])) == pytest.approx(n, rel=1e-12)
    assert float(vendi_score(np.eye(6)[:4] * 2)) == pytest.approx(4, rel=1e-12)  # n < D
    entropy = lambda p: -sum(q * math.log(q) for q in p)  # noqa: E731
    assert float(vendi_score(np.array([[1.0, 0], [2, 0], [0.5, 0], [0, 3]]))) == pytest.approx(
        math.exp(entropy([0.75, 0.25])), rel=1e-12)
    c = 0.6
    assert float(vendi_score(np.array([[1.0, 0], [c, math.sqrt(1 - c * c)]]))) == pytest.approx(
        math.exp(entropy([(1 + c) / 2, (1 - c) / 2])), rel=1e-12)


def test_vendi_equals_vendi_score_and_batches_over_seeds():
    """vendi-score 0.0.3's score_K (cosine kernel, n x n) and score_dual (D x D) on random features with n < D
    and n > D; a batch (S, n, D) gives each seed's score."""
    rng = np.random.default_rng(5)
    worst = 0.0
    for n, d in ((50, 8), (20, 64), (300, 32)):
        x = rng.normal(size=(n, d)) + rng.normal(size=d)  # correlated rows: VS well below min(n, d)
        ours = float(vendi_score(x))
        worst = max(worst, abs(ours - reference_vendi(x)), abs(ours - float(vendi.score_dual(x))))
        assert 1 < ours < min(n, d)
    assert worst < 1e-9, worst
    batch = rng.normal(size=(3, 40, 5))
    torch.testing.assert_close(vendi_score(batch), torch.tensor([reference_vendi(x) for x in batch],
                                                                dtype=torch.float64), rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match="nonzero"):
        vendi_score(np.array([[1.0, 0], [0, 0]]))

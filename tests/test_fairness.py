"""Group fairness metrics against fairlearn, hand-counted cases, seed batching, AIM-Fair's seed aggregation, and
the upweight and oversample repairs' group weights and shares."""

from __future__ import annotations

from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fairlearn.metrics import (
    MetricFrame, equalized_odds_difference, false_positive_rate_difference, true_positive_rate_difference,
)
from sklearn.metrics import accuracy_score

from models.conditional import RowWeighted
from models.ple import Fitted
from tasks.loop import Dataset
from tasks.studies.fairness import study as fairness_study
from tasks.studies.fairness.group_metrics import aggregate_over_seeds, batched_group_metrics, group_metrics
from tasks.studies.fairness.params import FairnessParams

GROUP_ACCS = ("acc_y0_s0", "acc_y0_s1", "acc_y1_s0", "acc_y1_s1")
KEYS = {"acc", "eo", "eo_max", "wga", *GROUP_ACCS}


def unbalanced(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """y, yhat, s with P(s = 1) = 0.15, y depending on s and a group-dependent P(yhat = 1 | y, s);
    the first four samples cover the four (y, s) groups so that none is empty."""
    rng = np.random.default_rng(seed)
    s = (rng.random(n) < 0.15).astype(int)
    y = (rng.random(n) < np.where(s == 1, 0.3, 0.7)).astype(int)
    y[:4], s[:4] = [0, 0, 1, 1], [0, 1, 0, 1]
    p_positive = np.array([[0.1, 0.35], [0.8, 0.55]])[y, s]  # P(yhat = 1 | y, s)
    return y, (rng.random(n) < p_positive).astype(int), s


def with_counts(counts: dict[tuple[int, int], tuple[int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """y, yhat, s from {(y, s): (number of samples, how many of them predicted 1)}."""
    rows = [(gy, int(i < positives), gs) for (gy, gs), (n, positives) in counts.items() for i in range(n)]
    return tuple(np.array(column) for column in zip(*rows))


def predictions_with_correct(y: np.ndarray, s: np.ndarray, correct: dict[tuple[int, int], int]) -> np.ndarray:
    """yhat that gets exactly correct[(y, s)] samples of each group right (the first ones) and the rest wrong."""
    yhat = 1 - y
    for (gy, gs), k in correct.items():
        yhat[np.flatnonzero((y == gy) & (s == gs))[:k]] = gy
    return yhat


@pytest.mark.parametrize("n", [40, 500, 5000])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_fairlearn(n, seed):
    y, yhat, s = unbalanced(n, seed)
    m = group_metrics(y, yhat, s)
    assert set(m) == KEYS and all(type(v) is float for v in m.values())

    tpr_diff = true_positive_rate_difference(y, yhat, sensitive_features=s)
    fpr_diff = false_positive_rate_difference(y, yhat, sensitive_features=s)
    # TPR_s = acc_y1_s and FPR_s = 1 - acc_y0_s: the two gaps eo and eo_max are built from
    tpr_gap, fpr_gap = abs(m["acc_y1_s1"] - m["acc_y1_s0"]), abs(m["acc_y0_s1"] - m["acc_y0_s0"])
    assert tpr_gap == pytest.approx(tpr_diff, abs=1e-12) and fpr_gap == pytest.approx(fpr_diff, abs=1e-12)
    assert min(tpr_diff, fpr_diff) > 0.01  # both gaps are really there
    assert m["eo_max"] == pytest.approx(equalized_odds_difference(y, yhat, sensitive_features=s), abs=1e-12)
    assert m["eo"] == pytest.approx(0.5 * (tpr_diff + fpr_diff), abs=1e-12)
    assert m["eo"] == pytest.approx(equalized_odds_difference(y, yhat, sensitive_features=s, agg="mean"), abs=1e-12)

    by_group = MetricFrame(metrics=accuracy_score, y_true=y, y_pred=yhat, sensitive_features={"y": y, "s": s}).by_group
    assert len(by_group) == 4
    for name in GROUP_ACCS:
        assert m[name] == pytest.approx(by_group.loc[(int(name[5]), int(name[8]))], abs=1e-12)
    assert m["wga"] == pytest.approx(by_group.min(), abs=1e-12)
    assert m["acc"] == pytest.approx(accuracy_score(y, yhat), abs=1e-12)


def test_input_types():
    """bool, int lists and torch tensors give the same numbers as int numpy arrays."""
    y, yhat, s = unbalanced(300, 7)
    expected = group_metrics(y, yhat, s)
    assert group_metrics(y.astype(bool), yhat.tolist(), torch.from_numpy(s)) == expected
    assert group_metrics(torch.from_numpy(y).bool(), torch.from_numpy(yhat).float(), s.astype(np.uint8)) == expected


def test_hand_counted():
    # (y, s): samples, predicted 1 -> rate P(yhat = 1 | y, s), group accuracy
    # (0, 0): 2, 1 -> FPR_0 = 1/2, acc 1/2      (0, 1): 3, 0 -> FPR_1 = 0,   acc 3/3
    # (1, 0): 3, 2 -> TPR_0 = 2/3, acc 2/3      (1, 1): 4, 1 -> TPR_1 = 1/4, acc 1/4
    # 12 samples, 1 + 3 + 2 + 1 = 7 correct; gaps |1/4 - 2/3| = 5/12 (TPR), |0 - 1/2| = 1/2 (FPR)
    y, yhat, s = with_counts({(0, 0): (2, 1), (0, 1): (3, 0), (1, 0): (3, 2), (1, 1): (4, 1)})
    assert len(y) == 12
    expected = {
        "acc": Fraction(7, 12), "eo": (Fraction(5, 12) + Fraction(1, 2)) / 2, "eo_max": Fraction(1, 2),
        "wga": Fraction(1, 4), "acc_y0_s0": Fraction(1, 2), "acc_y0_s1": Fraction(1), "acc_y1_s0": Fraction(2, 3),
        "acc_y1_s1": Fraction(1, 4),
    }
    assert expected["eo"] == Fraction(11, 24)
    m = group_metrics(y, yhat, s)
    assert m == {name: pytest.approx(float(value), abs=1e-15) for name, value in expected.items()}
    order = np.random.default_rng(0).permutation(12)  # the order of the samples does not matter
    assert group_metrics(y[order], yhat[order], s[order]) == m


def test_perfect_classifier():
    y, _, s = unbalanced(500, 0)
    m = group_metrics(y, y, s)
    assert m == {name: 0.0 if name in ("eo", "eo_max") else 1.0 for name in KEYS}


def test_predicting_the_attribute():
    """yhat = s: right on the groups with y = s, wrong on the others. TPR_1 = FPR_1 = 1, TPR_0 = FPR_0 = 0,
    so both gaps are 1 (as unfair as can be), wga = 0 and acc = (5 + 10) / 20."""
    y, _, s = with_counts({(0, 0): (5, 0), (0, 1): (2, 0), (1, 0): (3, 0), (1, 1): (10, 0)})
    m = group_metrics(y, s, s)
    assert m == {"acc": 0.75, "eo": 1.0, "eo_max": 1.0, "wga": 0.0,
                 "acc_y0_s0": 1.0, "acc_y0_s1": 0.0, "acc_y1_s0": 0.0, "acc_y1_s1": 1.0}
    assert equalized_odds_difference(y, s, sensitive_features=s) == 1.0


def test_constant_classifier_is_fair_but_useless():
    """yhat = 1 everywhere: TPR = FPR = 1 in both groups, so eo = 0 while the y = 0 groups are all wrong."""
    y, _, s = with_counts({(0, 0): (5, 0), (0, 1): (2, 0), (1, 0): (3, 0), (1, 1): (10, 0)})
    m = group_metrics(y, np.ones_like(y), s)
    assert (m["eo"], m["eo_max"], m["wga"], m["acc"]) == (0.0, 0.0, 0.0, 13 / 20)


def test_batched_equals_per_seed():
    y, _, s = unbalanced(400, 5)
    yhat = (np.random.default_rng(1).random((7, 400)) < 0.5).astype(int)
    batched = batched_group_metrics(torch.from_numpy(y), torch.from_numpy(yhat), s)
    assert set(batched) == KEYS and all(v.shape == (7,) for v in batched.values())
    for seed in range(7):
        single = group_metrics(y, yhat[seed], s)
        assert {name: float(v[seed]) for name, v in batched.items()} == pytest.approx(single, abs=1e-15)
    assert len({float(v) for v in batched["eo"]}) == 7  # the seeds really differ


def test_aggregate_wga_is_min_of_averaged_group_accuracies():
    # 10 samples per group; correct per group (y0s0, y0s1, y1s0, y1s1): seed A 9, 5, 9, 9; seed B 6, 9, 9, 9.
    # Per-seed wga 0.5 and 0.6, mean 0.55; seed-averaged group accuracies 0.75, 0.7, 0.9, 0.9 -> wga 0.7.
    # acc: 32/40 = 0.8 and 33/40 = 0.825. FPR_s = 1 - acc_y0_s, TPR gap 0: seed A FPR gap |0.5 - 0.1| = 0.4
    # (eo 0.2, eo_max 0.4), seed B |0.1 - 0.4| = 0.3 (eo 0.15, eo_max 0.3).
    y, _, s = with_counts({group: (10, 0) for group in [(0, 0), (0, 1), (1, 0), (1, 1)]})
    yhat = np.stack([predictions_with_correct(y, s, dict(zip([(0, 0), (0, 1), (1, 0), (1, 1)], correct)))
                     for correct in [(9, 5, 9, 9), (6, 9, 9, 9)]])
    per_seed = batched_group_metrics(y, yhat, s)
    assert per_seed["wga"] == pytest.approx([0.5, 0.6]) and per_seed["wga"].mean() == pytest.approx(0.55)
    summary = aggregate_over_seeds(per_seed)
    assert summary == pytest.approx({
        "acc": 0.8125, "eo": 0.175, "eo_max": 0.35, "wga": 0.7,
        "acc_y0_s0": 0.75, "acc_y0_s1": 0.7, "acc_y1_s0": 0.9, "acc_y1_s1": 0.9,
        "acc_se": 0.0125, "eo_se": 0.025, "eo_max_se": 0.05,  # two seeds: se = |a - b| / 2
    }, abs=1e-12)
    assert summary["wga"] > per_seed["wga"].mean()


def test_aggregate_random_seeds():
    y, _, s = unbalanced(300, 2)
    yhat = (np.random.default_rng(3).random((10, 300)) < 0.5).astype(int)
    per_seed = batched_group_metrics(y, yhat, s)
    summary = aggregate_over_seeds(per_seed)
    for name in ("acc", "eo", "eo_max"):
        assert summary[name] == pytest.approx(per_seed[name].mean(), abs=1e-15)
        assert summary[f"{name}_se"] == pytest.approx(np.std(per_seed[name], ddof=1) / np.sqrt(10), abs=1e-15)
    assert summary["wga"] == min(summary[name] for name in GROUP_ACCS)
    assert summary["wga"] >= per_seed["wga"].mean()


def test_aggregate_single_seed():
    y, yhat, s = unbalanced(200, 4)
    summary = aggregate_over_seeds(batched_group_metrics(y, yhat[None], s))
    assert {name: summary[name] for name in KEYS} == pytest.approx(group_metrics(y, yhat, s), abs=1e-15)
    assert all(np.isnan(summary[f"{name}_se"]) for name in ("acc", "eo", "eo_max"))


def test_aggregate_bad_input():
    per_seed = {name: np.full(3, 0.5) for name in KEYS}
    with pytest.raises(ValueError, match="needs the per-seed metrics.*acc_y1_s1"):
        aggregate_over_seeds({k: v for k, v in per_seed.items() if k != "acc_y1_s1"})
    with pytest.raises(ValueError, match="same, non-zero number of seeds"):
        aggregate_over_seeds({**per_seed, "eo": np.full(2, 0.5)})


def test_length_mismatch():
    y, yhat, s = unbalanced(50, 0)
    with pytest.raises(ValueError, match=r"same length, got 50, 49 and 50"):
        group_metrics(y, yhat[:-1], s)
    with pytest.raises(ValueError, match=r"same length, got 50, 50 and 48"):
        batched_group_metrics(y, yhat[None], s[:-2])


def test_non_binary_value():
    y, yhat, s = unbalanced(50, 0)
    yhat[10] = 2
    with pytest.raises(ValueError, match=r"yhat must hold only 0 and 1, got \[2\]"):
        group_metrics(y, yhat, s)
    with pytest.raises(ValueError, match=r"^s must hold only 0 and 1, got \[-1\]$"):
        group_metrics(y, y, np.where(s == 1, s, -1))
    with pytest.raises(ValueError, match=r"^y must hold only 0 and 1, got \[2, 3, 4, 5, 6\]$"):  # the first five
        group_metrics(np.arange(50) % 8, yhat, s)


def test_wrong_dimensions():
    y, yhat, s = unbalanced(50, 0)
    with pytest.raises(ValueError, match=r"yhat must be 1-D, got shape \(1, 50\)"):
        group_metrics(y, yhat[None], s)
    with pytest.raises(ValueError, match=r"yhat must be 2-D, got shape \(50,\)"):
        batched_group_metrics(y, yhat, s)


def test_empty_group():
    """fairlearn reports FPR = 0 for a group without negatives; we refuse to score such a test set."""
    y, yhat, s = with_counts({(0, 0): (4, 1), (1, 0): (3, 2), (1, 1): (5, 1)})  # no (y = 0, s = 1)
    assert false_positive_rate_difference(y, yhat, sensitive_features=s) == 0.25  # |0 (empty) - 1/4|
    with pytest.raises(ValueError, match=r"group y=0, s=1 is empty: the test set must contain all four"):
        group_metrics(y, yhat, s)
    with pytest.raises(ValueError, match=r"group y=0, s=1 is empty"):
        batched_group_metrics(y, yhat[None], s)


# Two seeds' D_g of 10 rows, 2x2 images: group 2 y + s of each row; s = 1 is drawn inverted (all pixels 255).
# Seed A: (0, 0) x6, (0, 1) x1, (1, 1) x3, no (1, 0). Seed B: (0, 0) x4, (0, 1) x2, (1, 0) x1, (1, 1) x3.
GROUPS_A = [0, 3, 0, 1, 0, 3, 0, 0, 3, 0]
GROUPS_B = [1, 0, 3, 2, 0, 3, 1, 0, 3, 0]


def fairness_rows(groups: list[list[int]]) -> torch.Tensor:
    """uint8 rows (S, N, 4 + 1) (pixels..., y) with the given groups 2 y + s."""
    g = torch.tensor(groups)
    return torch.cat([(255 * (g % 2))[..., None].expand(-1, -1, 4), (g // 2)[..., None]], dim=-1).to(torch.uint8)


def group_totals(groups: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Sum of the weights of each group per seed: (S, 4)."""
    return torch.zeros(len(groups), 4, dtype=weights.dtype).scatter_add_(1, groups, weights)


def repaired(method: str, rows: torch.Tensor, monkeypatch) -> tuple[object, torch.Tensor, Fitted]:
    """FairnessStudy.fit by upweight or oversample with the generator's training replaced by a recorder:
    what it would train (make_target, data) and the returned fit."""
    calls = []

    def record(make_target, x, config, generator, device):
        calls.append((make_target, x))
        return Fitted({"base.w": torch.zeros(len(x))})

    monkeypatch.setattr(fairness_study, "fit_direct", record)
    params = FairnessParams(n_samples=rows.shape[1], generations=1, seeds=len(rows))
    study = fairness_study.FairnessStudy(params, 0, SimpleNamespace(images=torch.zeros(1, 2, 2)), None,
                                         torch.device("cpu"))
    data = Dataset(rows, torch.ones(rows.shape[1], dtype=torch.bool))
    fitted = study.fit(data, method, torch.Generator().manual_seed(0))
    (make_target, x), = calls
    return make_target, x, fitted


def test_balancing_weights_give_every_present_group_the_same_total_weight():
    """w_i = 1 / (size of i's group in its seed), scaled to mean 1: each of the G present groups totals N / G.
    Seed A: 1/6, 1, 1/3 over their mean 3/10 -> 5/9, 10/3, 10/9 per row; totals 10/3, 10/3, 0, 10/3.
    Seed B: sizes 4, 2, 1, 3: 1/4, 1/2, 1, 1/3 over their mean 4/10 -> 5/8, 5/4, 5/2, 5/6; totals 5/2 each."""
    weights = fairness_study.balancing_weights(fairness_rows([GROUPS_A, GROUPS_B]), (2, 2))
    per_group = torch.tensor([[5 / 9, 10 / 3, 0.0, 10 / 9], [5 / 8, 5 / 4, 5 / 2, 5 / 6]])
    groups = torch.tensor([GROUPS_A, GROUPS_B])
    torch.testing.assert_close(weights, per_group.gather(1, groups))
    torch.testing.assert_close(group_totals(groups, weights), torch.tensor([[10 / 3, 10 / 3, 0, 10 / 3], [2.5] * 4]))


def test_upweight_trains_on_balancing_weights_so_every_group_weighs_the_same_in_the_loss(monkeypatch):
    """upweight hands the generator's training each row with its balancing weight appended, for a RowWeighted
    target, and the weighted loss sum_i w_i l_i / sum_i w_i is the mean over the present groups of each
    group's mean row loss. Row losses l_i = i (row index 0..9), seed A: (0, 0) rows 0 2 4 6 7 9, mean 14/3;
    (0, 1) row 3; (1, 1) rows 1 5 8, mean 14/3 -> (14/3 + 3 + 14/3) / 3 = 37/9 (the plain mean is 4.5).
    Seed B: (0, 0) rows 1 4 7 9 -> 21/4; (0, 1) rows 0 6 -> 3; (1, 0) row 3; (1, 1) rows 2 5 8 -> 5;
    (21/4 + 3 + 3 + 5) / 4 = 65/16, whatever the scale of the weights."""
    rows = fairness_rows([GROUPS_A, GROUPS_B])
    make_target, x, fitted = repaired("upweight", rows, monkeypatch)
    assert isinstance(make_target(), RowWeighted) and list(fitted.estimate) == ["w"]
    torch.testing.assert_close(x[..., :-1], fairness_study.ad.rows_to_float(rows))  # the rows themselves, in order
    weights = x[..., -1]
    torch.testing.assert_close(weights, fairness_study.balancing_weights(rows, (2, 2)))

    class RowIndexLoss(torch.nn.Module):
        def row_nll(self, x, noise):
            return torch.arange(len(x), dtype=x.dtype)

    loss = RowWeighted(RowIndexLoss())
    assert [float(loss.nll(seed)) for seed in x] == pytest.approx([37 / 9, 65 / 16], abs=1e-6)
    tripled = torch.cat([x[..., :-1], 3 * x[..., -1:]], dim=-1)  # normalised by sum_i w_i, not by N
    assert [float(loss.nll(seed)) for seed in tripled] == pytest.approx([37 / 9, 65 / 16], abs=1e-6)


def test_oversample_redraws_n_rows_with_equal_expected_group_shares_and_no_absent_group(monkeypatch):
    """oversample hands the generator's training N = |D_g| rows drawn from each seed's own D_g with
    probabilities proportional to the balancing weights: every present group's expected share is 1 / G
    (seed A: 1/3 for (0, 0), (0, 1), (1, 1); seed B: 1/4 each), and the group absent from seed A stays absent.
    1,000 seeds of each kind, 10,000 draws: a share's standard error is at most 0.005; the tolerance 0.02 is
    4 of them (plain resampling would give A 0.6, 0.1, 0, 0.3)."""
    rows = fairness_rows([GROUPS_A, GROUPS_B] * 1000)
    _, x, _ = repaired("oversample", rows, monkeypatch)
    assert x.shape == (2000, 10, 5)
    drawn = (2 * x[..., -1] + (x[..., :-1].mean(-1) > 0.5)).long()
    shares = torch.nn.functional.one_hot(drawn, 4).double()
    share_a, share_b = shares[0::2].mean((0, 1)), shares[1::2].mean((0, 1))
    assert share_a[2] == 0
    assert share_a.tolist() == pytest.approx([1 / 3, 1 / 3, 0, 1 / 3], abs=0.02)
    assert share_b.tolist() == pytest.approx([1 / 4] * 4, abs=0.02)

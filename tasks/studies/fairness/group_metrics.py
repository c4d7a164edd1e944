"""Group fairness of a binary classifier: accuracy, equalized odds, worst-group accuracy (docs/metrics.md).

For a binary target y, prediction yhat and sensitive attribute s in {0, 1}:

    TPR_s = P(yhat = 1 | y = 1, s)        FPR_s = P(yhat = 1 | y = 0, s)
    eo     = (|TPR_1 - TPR_0| + |FPR_1 - FPR_0|) / 2    equalized odds as in AIM-Fair
    eo_max = max(|TPR_1 - TPR_0|, |FPR_1 - FPR_0|)       fairlearn's equalized_odds_difference (worst_case)
    acc_y{y}_s{s} = P(yhat = y | y, s)                  accuracy of each of the four (y, s) groups
    wga    = min over the four groups of acc_y{y}_s{s}   worst-group accuracy
    acc    = P(yhat = y)

TPR_s = acc_y1_s{s} and FPR_s = 1 - acc_y0_s{s}, so every metric follows from the predicted positives
of the four groups. All four must be non-empty: fairlearn silently reports a rate of 0 for an empty one.

Across seeds (AIM-Fair): acc, eo, eo_max and the group accuracies are averaged, and wga is the min of
the seed-averaged group accuracies, which is >= the mean of the per-seed wga.

References: Hardt, Price, Srebro 2016, "Equality of Opportunity in Supervised Learning" (equalized odds);
Zhao et al. 2025, "AIM-Fair: Advancing Algorithmic Fairness via Selectively Fine-Tuning Biased Models
with Contextual Synthetic Data" (eo, wga and their aggregation over seeds); fairlearn (eo_max).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tasks.outputs.tables import standard_error

GROUPS = ((0, 0), (0, 1), (1, 0), (1, 1))  # (y, s); group index = 2 y + s
GROUP_ACCS = tuple(f"acc_y{y}_s{s}" for y, s in GROUPS)
SE_METRICS = ("acc", "eo", "eo_max")  # reported with a standard error over seeds


def _binary(name: str, x: Any, ndim: int) -> np.ndarray:
    """x as an int64 array of `ndim` dimensions holding only 0 and 1."""
    a = np.asarray(x)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    bad = ~np.isin(a, (0, 1))
    if bad.any():
        raise ValueError(f"{name} must hold only 0 and 1, got {np.unique(a[bad])[:5].tolist()}")
    return a.astype(np.int64)


def _checked(y: Any, yhat: Any, s: Any, yhat_ndim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated y (N,), yhat (..., N), s (N,) with all four (y, s) groups present."""
    y, yhat, s = _binary("y", y, 1), _binary("yhat", yhat, yhat_ndim), _binary("s", s, 1)
    if not len(y) == yhat.shape[-1] == len(s):
        raise ValueError(f"y, yhat and s must have the same length, got {len(y)}, {yhat.shape[-1]} and {len(s)}")
    for gy, gs in GROUPS:
        if not ((y == gy) & (s == gs)).any():
            raise ValueError(f"group y={gy}, s={gs} is empty: the test set must contain all four (y, s) groups")
    return y, yhat, s


def _metrics(y: np.ndarray, yhat: np.ndarray, s: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric as an (S,) array for validated y (N,), yhat (S, N), s (N,)."""
    members = np.stack([(y == gy) & (s == gs) for gy, gs in GROUPS], axis=1).astype(np.float64)  # (N, 4)
    sizes = members.sum(axis=0)
    positives = yhat.astype(np.float64) @ members  # (S, 4), exact integer counts
    correct = np.where(np.array([gy for gy, _ in GROUPS]) == 1, positives, sizes - positives)
    rate = positives / sizes  # P(yhat = 1 | y, s): FPR_0, FPR_1, TPR_0, TPR_1
    fpr_gap, tpr_gap = np.abs(rate[:, 1] - rate[:, 0]), np.abs(rate[:, 3] - rate[:, 2])
    group_acc = correct / sizes
    return {
        "acc": correct.sum(axis=1) / len(y),
        "eo": (tpr_gap + fpr_gap) / 2,
        "eo_max": np.maximum(tpr_gap, fpr_gap),
        "wga": group_acc.min(axis=1),
        **{name: group_acc[:, i] for i, name in enumerate(GROUP_ACCS)},
    }


def group_metrics(y: Any, yhat: Any, s: Any) -> dict[str, float]:
    """acc, eo, eo_max, wga and acc_y{y}_s{s} of predictions yhat (N,) for target y (N,), attribute s (N,).

    Inputs are 0/1 arrays, bool or int, numpy or torch; raises ValueError on a length mismatch, a value
    outside {0, 1} or an empty (y, s) group."""
    y, yhat, s = _checked(y, yhat, s, yhat_ndim=1)
    return {name: float(value[0]) for name, value in _metrics(y, yhat[None], s).items()}


def batched_group_metrics(y: Any, yhat: Any, s: Any) -> dict[str, np.ndarray]:
    """The metrics of `group_metrics` as (S,) arrays for S seeds' predictions yhat (S, N), y and s (N,) shared."""
    return _metrics(*_checked(y, yhat, s, yhat_ndim=2))


def aggregate_over_seeds(per_seed: dict[str, np.ndarray]) -> dict[str, float]:
    """AIM-Fair's summary of `batched_group_metrics` over S seeds.

    acc, eo, eo_max and each acc_y{y}_s{s}: mean over seeds. wga: min over the four groups of the
    seed-averaged group accuracies, not the mean of the per-seed wga (which it never falls below; the
    per-seed wga is ignored). <name>_se for acc, eo, eo_max: std (ddof = 1) / sqrt(S), nan when S = 1.
    """
    missing = [name for name in (*SE_METRICS, *GROUP_ACCS) if name not in per_seed]
    if missing:
        raise ValueError(f"aggregate_over_seeds needs the per-seed metrics {missing}")
    values = {name: np.asarray(per_seed[name], dtype=np.float64).reshape(-1) for name in (*SE_METRICS, *GROUP_ACCS)}
    seeds = {name: len(v) for name, v in values.items()}
    if len(set(seeds.values())) != 1 or not seeds["acc"]:
        raise ValueError(f"per-seed metrics must have the same, non-zero number of seeds, got {seeds}")
    mean = {name: float(v.mean()) for name, v in values.items()}
    return {
        **{name: mean[name] for name in SE_METRICS},
        "wga": min(mean[name] for name in GROUP_ACCS),
        **{name: mean[name] for name in GROUP_ACCS},
        **{f"{name}_se": standard_error(values[name]) for name in SE_METRICS},
    }

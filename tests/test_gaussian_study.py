"""The Gaussian study through the real flow (Prefect test server, Parquet, MLflow on SQLite),
checked against theory (docs/methods.md, docs/loop.md):

- MLE in the replace loop: E[sigma_hat_g^2] = sigma^2 ((n-1)/n)^(g+1) lambda^g;
- PLE: E[sigma_hat_g] = sigma for normal data and lambda = 1 (the estimate is a martingale).

Every comparison allows 4 standard errors over the seeds of that generation.
"""

from __future__ import annotations

import pandas as pd
import pytest

from flows.study import study_flow
from models.gaussian import expected_mle_variance

from conftest import colour, figure_pixels, write_params

CASES = [  # n, generations, sampling bias: short chains for small n, whose PLE runs get heavy-tailed
    (5, 10, 1.0),
    pytest.param(10, 20, 1.0, marks=pytest.mark.slow),
    pytest.param(50, 25, 1.0, marks=pytest.mark.slow),
    (10, 12, 0.8),
]


def _run(tmp_path, n, generations, bias, seeds=3000, distribution="normal", mode="replace") -> pd.DataFrame:
    params = write_params(tmp_path, seed=11, loop={"mode": mode, "sampling_bias": bias},
                          gaussian={"n_samples": n, "generations": generations, "seeds": seeds,
                                    "distribution": distribution})
    return study_flow(study="gaussian", params_file=str(params), root=str(tmp_path))


def _by_generation(tidy: pd.DataFrame, method: str, metric: str) -> pd.DataFrame:
    rows = tidy[(tidy.method == method) & (tidy.metric == metric)]
    grouped = rows.groupby("generation")["value"]
    return pd.DataFrame({"mean": grouped.mean(), "se": grouped.std() / grouped.count() ** 0.5})


@pytest.mark.parametrize("n,generations,bias", CASES)
def test_mle_variance_decays_by_n_minus_1_over_n(tmp_path, prefect_api, n, generations, bias):
    tidy = _run(tmp_path, n, generations, bias)
    stats = _by_generation(tidy, "mle", "sigma2_hat")
    theory = pd.Series([expected_mle_variance(1.0, n, g, bias) for g in stats.index], index=stats.index)
    z = (stats["mean"] - theory) / stats["se"]
    assert (z.abs() < 4).all(), z.round(2).to_dict()
    # The decay is real: the last generation sits many standard errors below the first.
    assert stats["mean"].iloc[-1] < stats["mean"].iloc[0] - 4 * stats["se"].iloc[0]
    if bias == 1.0:
        ple = _by_generation(tidy, "ple", "sigma_hat")
        z_ple = (ple["mean"] - 1.0) / ple["se"]
        assert (z_ple.abs() < 4).all(), z_ple.round(2).to_dict()


def test_uniform_data_keeps_the_mle_law_and_the_bias_column(tmp_path, prefect_api):
    """E[SS/n] = (n-1)/n sigma^2 holds for any distribution, so the MLE law holds from U[0, 1] too."""
    tidy = _run(tmp_path, 10, 8, 1.0, distribution="uniform")
    stats = _by_generation(tidy, "mle", "sigma2_hat")
    theory = pd.Series([expected_mle_variance(1 / 12, 10, g, 1.0) for g in stats.index], index=stats.index)
    assert (((stats["mean"] - theory) / stats["se"]).abs() < 4).all()
    assert set(tidy["distribution"]) == {"uniform"}
    bias = tidy[tidy.metric == "sigma_bias"].value.to_numpy()
    sigma = tidy[tidy.metric == "sigma_hat"].value.to_numpy()
    assert abs((sigma - bias) - 12**-0.5).max() < 1e-12


@pytest.mark.slow
def test_real_data_slows_the_collapse(tmp_path, prefect_api):
    """Every mode that keeps real data ends with a larger MLE variance than replace (Gerstgrasser et al.)."""
    final = {}
    for mode in ("replace", "accumulate", "augment", "fresh"):
        stats = _by_generation(_run(tmp_path / mode, 10, 12, 1.0, seeds=1000, mode=mode), "mle", "sigma2_hat")
        final[mode] = stats.iloc[-1]
    for mode in ("accumulate", "augment", "fresh"):
        gap = final[mode]["mean"] - final["replace"]["mean"]
        assert gap > 4 * (final[mode]["se"] ** 2 + final["replace"]["se"] ** 2) ** 0.5, (mode, final)


def test_outputs_are_tidy_and_complete(tmp_path, prefect_api):
    tidy = _run(tmp_path, 6, 4, 1.0, seeds=7)
    assert list(tidy.columns[:6]) == ["experiment", "method", "seed", "generation", "metric", "value"]
    assert len(tidy) == 2 * 7 * 4 * 4  # methods x seeds x generations x metrics
    on_disk = pd.read_csv(tmp_path / "metrics/gaussian/per_generation.csv")
    pd.testing.assert_frame_equal(on_disk, tidy, check_dtype=False)
    curves = pd.read_csv(tmp_path / "metrics/gaussian/curves.csv")
    assert {"sigma_hat_mean", "sigma_hat_se", "sigma_hat_median"} <= set(curves.columns)
    figure = figure_pixels(tmp_path / "figures/gaussian/sigma_hat_sigma2_hat.png", (5.2 * 2, 4))  # two panels
    assert colour(figure) > 0.005  # mean lines and SE bands drawn

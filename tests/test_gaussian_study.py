"""The Gaussian study through the real flow (Prefect test server, Parquet, MLflow on SQLite),
checked against theory (docs/methods.md, docs/loop.md):

- MLE in the replace loop: E[sigma_hat_g^2] = sigma^2 ((n-1)/n)^(g+1) lambda^g;
- MLE in the fresh loop, real data as a proportion or an amount: the recursion of
  `models.gaussian.expected_mle_variance_fresh`;
- MLE in the accumulate_subsample loop: the generation-1 law below, and every generation against a
  direct NumPy simulation of the loop's definition;
- PLE: E[sigma_hat_g] = sigma for normal data and lambda = 1 (the estimate is a martingale).

Every comparison allows 4 standard errors over the seeds of that generation.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from flows.study import study_flow
from models.gaussian import expected_mle_variance, expected_mle_variance_fresh

from conftest import colour, figure_pixels, write_params

CASES = [  # n, generations, sampling bias: short chains for small n, whose PLE runs get heavy-tailed
    (5, 10, 1.0),
    pytest.param(10, 20, 1.0, marks=pytest.mark.slow),
    pytest.param(50, 25, 1.0, marks=pytest.mark.slow),
    (10, 12, 0.8),
]


def _run(tmp_path, n, generations, bias, seeds=3000, distribution="normal", mode="replace", methods=("mle", "ple"),
         **loop) -> pd.DataFrame:
    params = write_params(tmp_path, seed=11, loop={"mode": mode, "sampling_bias": bias, **loop},
                          gaussian={"n_samples": n, "generations": generations, "seeds": seeds,
                                    "distribution": distribution, "methods": list(methods)})
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


def test_the_fresh_law_without_real_points_is_the_replace_law():
    recursion = expected_mle_variance_fresh(2.0, 7, 0, 7, 9, 0.8)
    assert np.allclose(recursion, [expected_mle_variance(2.0, 7, g, 0.8) for g in range(9)], rtol=1e-12)


@pytest.mark.parametrize("loop", [{"real_fraction": 0.5}, {"real_points": 3}], ids=["proportion", "amount"])
def test_mle_variance_in_the_fresh_loop_follows_its_recursion(tmp_path, prefect_api, loop):
    """n = 6: real data as a proportion (3 real + 3 synthetic points) or an amount (3 real beside 6 synthetic);
    the law also differs from replace's by many standard errors, so the test tells the modes apart."""
    n, generations = 6, 8
    stats = _by_generation(_run(tmp_path, n, generations, 1.0, mode="fresh", **loop), "mle", "sigma2_hat")
    n_real = 3
    n_synth = n - n_real if "real_fraction" in loop else n
    theory = pd.Series(expected_mle_variance_fresh(1.0, n, n_real, n_synth, generations, 1.0), index=stats.index)
    z = (stats["mean"] - theory) / stats["se"]
    assert (z.abs() < 4).all(), z.round(2).to_dict()
    assert theory.iloc[-1] - expected_mle_variance(1.0, n, generations - 1, 1.0) > 10 * stats["se"].iloc[-1]


def _accumulate_subsample_reference(n: int, generations: int, seeds: int, rng: np.random.Generator) -> np.ndarray:
    """E[sigma_hat_g^2] by direct simulation of the definition (docs/loop.md): pool A_0 = D_0 ~ N(0, 1);
    model g = (mean, biased variance) of n points of A_g drawn without replacement; A_(g+1) = A_g + n
    samples of model g. Returns (generations, seeds) variances."""
    out = np.empty((generations, seeds))
    for s in range(seeds):
        pool = rng.normal(size=n)
        for g in range(generations):
            fit = rng.choice(pool, size=n, replace=False)
            out[g, s] = fit.var()
            pool = np.concatenate([pool, rng.normal(fit.mean(), fit.std(), size=n)])
    return out


def test_mle_variance_in_the_accumulate_subsample_loop(tmp_path, prefect_api):
    """Generation 1 against its law: A_1 = D_0 + S_1 (M = 2n points), D_1 = n of them without replacement,
    so E[v_1 | A_1] = (n-1)/n SS(A_1)/(M-1), and E[SS(A_1)] = E[v_0] (n + (n - 1/2) lambda) (within D_0,
    within S_1, and the gap of their means, whose variance is lambda v_0 / n), with E[v_0] = (n-1)/n:

        E[v_1] = ((n-1)/n)^2 (n + (n - 1/2) lambda) / (2n - 1)

    Every generation against a direct simulation of the definition (independent of the pipeline's code);
    both within 4 combined standard errors."""
    n, generations, seeds = 4, 5, 6000
    stats = _by_generation(_run(tmp_path, n, generations, 1.0, seeds=seeds, mode="accumulate_subsample"), "mle",
                           "sigma2_hat")
    law = ((n - 1) / n) ** 2 * (n + (n - 0.5)) / (2 * n - 1)
    assert abs(stats["mean"][1] - law) < 4 * stats["se"][1], (stats["mean"][1], law)
    assert law - expected_mle_variance(1.0, n, 1, 1.0) > 4 * stats["se"][1]  # not replace's law
    reference = _accumulate_subsample_reference(n, generations, seeds, np.random.default_rng(0))
    ref_mean, ref_se = reference.mean(1), reference.std(1, ddof=1) / seeds**0.5
    z = (stats["mean"].to_numpy() - ref_mean) / np.hypot(stats["se"].to_numpy(), ref_se)
    assert (np.abs(z) < 4).all(), z.round(2)


@pytest.mark.slow
def test_real_data_slows_the_collapse(tmp_path, prefect_api):
    """Every mode that keeps real data ends with a larger MLE variance than replace (Gerstgrasser et al.)."""
    final = {}
    for mode in ("replace", "accumulate", "augment", "fresh"):
        tidy = _run(tmp_path / mode, 10, 12, 1.0, seeds=1000, mode=mode, methods=["mle"])
        stats = _by_generation(tidy, "mle", "sigma2_hat")
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
    for (method, generation), rows in tidy.groupby(["method", "generation"]):  # each row is its record's value
        record = json.loads((tmp_path / f"data/generations/gaussian/{method}/gen_{generation:03d}.json").read_text())
        expected = [(name, seed, value) for name, values in record["metrics"].items()
                    for seed, value in enumerate(values)]
        assert list(zip(rows.metric, rows.seed, rows.value)) == expected
    curves = pd.read_csv(tmp_path / "metrics/gaussian/curves.csv")
    assert {"sigma_hat_mean", "sigma_hat_se", "sigma_hat_median"} <= set(curves.columns)
    figure = figure_pixels(tmp_path / "figures/gaussian/sigma_hat_sigma2_hat.png", (5.2 * 2, 4))  # two panels
    assert colour(figure) > 0.005  # mean lines and SE bands drawn

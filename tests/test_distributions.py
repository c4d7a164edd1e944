"""The distribution grid's families: closed-form MLEs against scipy, sampling against the true
moments, reparameterised samples against the closed-form sampler, and the grid flow."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from flows.study import study_flow
from models.distributions import FAMILIES, draw_true
from models.hypernet import HyperNetwork

from conftest import colour, figure_pixels, write_params

def _moments(x: torch.Tensor) -> tuple[float, float, float, float]:
    """Sample mean and variance with their standard errors (the latter from the fourth central moment)."""
    x = x.double()
    n, mean, var = len(x), x.mean(), x.var()
    fourth = (x - mean).pow(4).mean()
    return mean.item(), (var / n).sqrt().item(), var.item(), ((fourth - var**2) / n).sqrt().item()


SCIPY = {"normal": stats.norm, "uniform": stats.uniform, "exponential": stats.expon, "laplace": stats.laplace}


def _to_scipy(name: str, report: dict[str, float]) -> dict[str, float]:
    return {"normal": lambda r: (r["mu"], r["sigma"]), "uniform": lambda r: (r["a"], r["b"] - r["a"]),
            "exponential": lambda r: (0.0, 1 / r["rate"]), "laplace": lambda r: (r["mu"], r["b"])}[name](report)


@pytest.mark.parametrize("name", list(SCIPY))
def test_mle_matches_scipy_fit(name):
    family = FAMILIES[name]()
    x = draw_true(family, 2, 501, torch.Generator().manual_seed(0))
    ours = family.mle(x)
    for s in range(2):
        fixed = {"floc": 0.0} if name == "exponential" else {}
        expected = SCIPY[name].fit(x[s, :, 0].numpy(), **fixed)
        got = _to_scipy(name, {k: v[s].item() for k, v in ours.items()})
        assert got == pytest.approx(expected, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_true_draws_have_the_true_mean_and_variance(name):
    family = FAMILIES[name]()
    mean, se_mean, var, se_var = _moments(draw_true(family, 1, 200_000, torch.Generator().manual_seed(1))[0, :, 0])
    expected = {"normal": (0, 1), "uniform": (0.5, 1 / 12), "exponential": (1, 1), "laplace": (0, 2),
                "mixture": (0.4, 1 + 0.8 * 0.2 * 2**2)}[name]  # mixture: within + between-component variance
    assert abs(mean - expected[0]) < 4 * se_mean
    assert abs(var - expected[1]) < 4 * se_var


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("bias", [1.0, 0.5])
def test_reparameterised_samples_follow_the_closed_form_sampler(name, bias):
    """rsample with the true parameters and the closed-form sampler agree in mean and variance."""
    family = FAMILIES[name]()
    hyper = HyperNetwork(family, 1)
    weights = {"normal": {"theta": torch.tensor([0.0, 0.0])}, "uniform": {"theta": torch.tensor([0.0, 0.0])},
               "exponential": {"theta": torch.tensor([0.0])}, "laplace": {"theta": torch.tensor([0.0, 0.0])},
               "mixture": {"logits": torch.tensor([0.8, 0.2]).log(), "means": torch.tensor([[0.0], [2.0]]),
                           "log_stds": torch.zeros(2, 1)}}[name]
    noise = family.noise(100_000, torch.Generator().manual_seed(2))
    y = _moments(hyper.run_target(weights, noise, bias, op="rsample")[:, 0])
    report = {k: torch.tensor([v], dtype=torch.float64) for k, v in family.truth.items()}
    z = _moments(family.sample(report, 100_000, bias, torch.Generator().manual_seed(3))[0, :, 0])
    assert abs(y[0] - z[0]) < 4 * (y[1] ** 2 + z[1] ** 2) ** 0.5  # means of two independent samples
    assert abs(y[2] - z[2]) < 4 * (y[3] ** 2 + z[3] ** 2) ** 0.5  # variances


@pytest.mark.slow
def test_grid_flow_estimates_every_family(tmp_path, prefect_api):
    params = write_params(tmp_path, grid={"distributions": ["exponential", "mixture"], "n_samples": 20,
                                          "generations": 2, "seeds": 3,
                                          "ple": {"lam": 0.1, "steps": 15, "lr": 0.01, "batch_fraction": 0.5}})
    tidy = study_flow(study="grid", params_file=str(params), root=str(tmp_path))
    assert set(tidy.distribution) == {"exponential", "mixture"} and set(tidy.method) == {"mle", "hyper_mle", "ple"}
    exp = tidy[(tidy.distribution == "exponential")]
    assert {"rate", "rate_bias", "response", "response_slope_mle"} <= set(exp.metric)
    rate = exp[exp.metric == "rate"].set_index(["method", "seed", "generation"]).value
    bias = exp[exp.metric == "rate_bias"].set_index(["method", "seed", "generation"]).value
    assert ((rate - bias) - 1.0).abs().max() < 1e-9
    # 1 + 5 parameter panels (rate; weight_1, mean_1, mean_2, std_1, std_2), 4 to a row
    assert colour(figure_pixels(tmp_path / "figures/grid/parameters.png", (4.2 * 4, 3.2 * 2))) > 0.005


@pytest.mark.parametrize("name", list(FAMILIES))
def test_sampling_bias_scales_the_variance_by_lambda_around_the_stated_centre(name):
    """Both samplers at the true parameters and lambda = 0.5, against each family's law: the spread is
    scaled by sqrt(lambda) about the mean (normal, laplace; uniform: about the midpoint; each mixture
    component about its mean), or the draws themselves (exponential), so the variance is lambda times the
    unbiased one (the mixture's within-component part only)."""
    lam, family = 0.5, FAMILIES[name]()
    expected = {"normal": (0, lam), "uniform": (0.5, lam / 12), "exponential": (lam ** 0.5, lam),
                "laplace": (0, 2 * lam), "mixture": (0.4, lam + 0.8 * 0.2 * 2**2)}[name]
    report = {k: torch.tensor([v], dtype=torch.float64) for k, v in family.truth.items()}
    weights = {"logits": torch.tensor([0.8, 0.2]).log(), "means": torch.tensor([[0.0], [2.0]]),
               "log_stds": torch.zeros(2, 1)} if name == "mixture" else {"theta": torch.zeros_like(family.theta)}
    draws = {"closed form": family.sample(report, 200_000, lam, torch.Generator().manual_seed(3))[0, :, 0],
             "rsample": HyperNetwork(family, 1).run_target(
                 weights, family.noise(200_000, torch.Generator().manual_seed(2)), lam, op="rsample")[:, 0]}
    for sampler, y in draws.items():
        mean, se_mean, var, se_var = _moments(y)
        assert abs(mean - expected[0]) < 4 * se_mean, (sampler, mean)
        assert abs(var - expected[1]) < 4 * se_var, (sampler, var)

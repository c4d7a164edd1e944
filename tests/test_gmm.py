"""The GMM study: EM against scikit-learn, Monte Carlo KL against closed forms, and the flow."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from mlflow import MlflowClient

from flows.study import study_flow
from models.gmm import GMMGenerator, Mixture, bounded, em, kl_monte_carlo
from models.ple import Fitted
from tasks.loop import GridPoint, generator, real_dataset
from tasks.studies import load_params
from tasks.infra.paths import StudyPaths
from tasks.outputs.tables import curves, tidy_rows
from tasks.studies.gmm import build_grid, build_lambda_sweep, grid_figures
from tasks.studies.gmm.study import GMMParams, GMMStudy

from conftest import ROOT, write_params


def _mixture(weights, means, stds, seeds=1) -> Mixture:
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return Mixture(t(weights).expand(seeds, -1), t(means).expand(seeds, -1, -1), t(stds).expand(seeds, -1, -1))


def test_em_matches_scikit_learn():
    true = _mixture([0.7, 0.3], [[-2.0, 0.0], [2.0, 1.0]], [[1.0, 0.5], [0.7, 1.5]], seeds=3)
    x = true.sample(4000, 1.0, torch.Generator().manual_seed(0))
    ours = em(x, 2, iterations=500)
    for s in range(3):
        ref = GaussianMixture(2, covariance_type="diag", tol=1e-10, max_iter=1000, random_state=0).fit(x[s].numpy())
        order = np.argsort(ref.means_[:, 0])
        np.testing.assert_allclose(ours.weights[s].numpy(), ref.weights_[order], atol=2e-3)
        np.testing.assert_allclose(ours.means[s].numpy(), ref.means_[order], atol=5e-3)
        np.testing.assert_allclose(ours.stds[s].numpy() ** 2, ref.covariances_[order], atol=5e-3, rtol=1e-3)
        one = Mixture(ours.weights[s: s + 1], ours.means[s: s + 1], ours.stds[s: s + 1])
        ours_ll = one.log_prob(x[s: s + 1]).mean().item()
        assert ours_ll == pytest.approx(ref.score(x[s].numpy()), abs=1e-6)


def test_one_em_step_from_the_stated_start_matches_scikit_learn():
    """em's start (means at the points of rank round((i + 1/2)/K (n - 1)) in the first coordinate, equal
    weights, each coordinate's sample sd) followed by one EM step equals scikit-learn's single step from
    that start, on 2-D data whose coordinates have different spreads."""
    true = _mixture([0.6, 0.4], [[-1.0, 0.0], [1.5, 2.0]], [[1.0, 3.0], [0.5, 1.0]])
    x = true.sample(301, 1.0, torch.Generator().manual_seed(1))
    k, points = 3, x[0].numpy()
    ranked = points[np.argsort(points[:, 0])]
    start = ranked[[round((i + 0.5) / k * (len(points) - 1)) for i in range(k)]]
    ref = GaussianMixture(k, covariance_type="diag", max_iter=1, reg_covar=0.0, weights_init=np.full(k, 1 / k),
                          means_init=start, precisions_init=np.tile(1 / points.var(axis=0, ddof=1), (k, 1)))
    with pytest.warns(ConvergenceWarning):
        ref.fit(points)
    ours = em(x, k, iterations=1)
    np.testing.assert_allclose(ours.weights[0].numpy(), ref.weights_, rtol=1e-9)
    np.testing.assert_allclose(ours.means[0].numpy(), ref.means_, rtol=1e-9)
    np.testing.assert_allclose(ours.stds[0].numpy() ** 2, ref.covariances_, rtol=1e-9)


def test_kl_of_a_mixture_to_itself_is_zero():
    p = _mixture([0.8, 0.2], [[0.0], [2.0]], [[1.0], [1.0]], seeds=2)
    kl, se = kl_monte_carlo(p, p, 1000, torch.Generator().manual_seed(1))
    assert torch.equal(kl, torch.zeros(2)) and torch.equal(se, torch.zeros(2))


def test_kl_matches_the_gaussian_closed_form_within_its_standard_error():
    """Two equal components are one Gaussian: KL(N(0,1) || N(1, 2^2)) = log 2 + 2/8 - 1/2."""
    p = _mixture([0.5, 0.5], [[0.0], [0.0]], [[1.0], [1.0]])
    q = _mixture([0.5, 0.5], [[1.0], [1.0]], [[2.0], [2.0]])
    kl, se = kl_monte_carlo(p, q, 200_000, torch.Generator().manual_seed(2))
    exact = math.log(2.0) + 2 / 8 - 0.5
    assert abs(kl.item() - exact) < 4 * se.item()


TINY = {"generations": 2, "seeds": 3, "kl_samples": 500,
        "ple": {"lam": 0.1, "steps": 20, "lr": 0.01, "batch_fraction": 0.5}}


def test_gmm_flow_runs_the_grid_with_every_method(tmp_path, prefect_api):
    params = write_params(tmp_path, gmm={"grid": {"weight": [0.9], "n_samples": [20, 40]}, **TINY})
    tidy = study_flow(study="gmm", params_file=str(params), root=str(tmp_path))
    assert set(tidy.method) == {"mle", "hyper_mle", "ple"}
    assert set(zip(tidy.weight, tidy.n_samples)) == {(0.9, 20), (0.9, 40)}
    by_method = tidy.groupby("method").metric.unique()
    assert {"kl", "kl_mc_se", "weight_1", "mean_2", "std_1"} <= set(by_method["mle"])
    assert {"response", "response_slope", "response_slope_mle"} <= set(by_method["ple"])
    assert "response" not in by_method["mle"]
    assert (tidy[tidy.metric == "kl"].value >= 0).all()
    summary = json.loads((tmp_path / "metrics/gmm/summary.json").read_text())
    assert set(summary["ple"]) == {"weight=0.9,n_samples=20", "weight=0.9,n_samples=40"}
    for name in ("kl_difference.png", "kl_curves.png"):
        assert (tmp_path / "figures/gmm" / name).stat().st_size > 10_000
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("gmm").experiment_id],
                              filter_string="tags.level = 'method' and tags.method = 'ple' and tags.n_samples = '20'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    curve = client.get_metric_history(runs[0].info.run_id, "train_penalty/gen_001")
    assert [m.step for m in curve] == list(range(20)) and all(m.value >= 0 for m in curve)
    folder = tmp_path / "data/generations/gmm/ple/weight=0.9,n_samples=20"
    assert sorted(p.name for p in folder.glob("*.parquet")) == ["gen_000.parquet", "gen_001.parquet"]


def test_lambda_sweep_runs_ple_per_form_and_lambda_beside_the_baselines(tmp_path, prefect_api):
    sweep = {"lams": [0.1, 10.0], "forms": ["paper", "stop_gradient"], "weight": 0.9, "n_samples": 20}
    tidy = study_flow(study="gmm_lambda", params_file=str(write_params(tmp_path, gmm={"lambda_sweep": sweep, **TINY})),
                           root=str(tmp_path))
    kl = tidy[(tidy.metric == "kl") & (tidy.generation == 1)]
    ple = kl[kl.method == "ple"]
    assert set(zip(ple.form, ple.lam)) == {(f, lam) for f in ("paper", "stop_gradient") for lam in (0.1, 10.0)}
    assert set(kl[kl.lam == 0.0].method) == {"mle", "hyper_mle"}
    assert len(kl) == 6 * 3  # (mle, hyper_mle, ple x 2 forms x 2 lambdas) x seeds
    assert (tmp_path / "figures/gmm_lambda/kl_vs_lambda.png").stat().st_size > 10_000


def _gmm_study(ple: dict, seeds: int = 8) -> GMMStudy:
    section = load_params(ROOT / "params.yaml").gmm
    section = GMMParams.model_validate({**section.model_dump(), "seeds": seeds,
                                        "ple": {**section.ple.model_dump(), **ple}})
    return GMMStudy(section, 0.8, 200, section.ple.lam, GridPoint({"weight": 0.8, "n_samples": 200}))


def test_training_over_reweighted_draws_makes_h_follow_the_minority_mean():
    """hyper_mle at n = 200, weight 0.8, 8 seeds: H's responses to the minority component's mean
    (probes at 1.5, 2, 2.5) and to the mixture mean, relative to EM's, trained 1000 steps on reweighted
    tenth-size draws, against the former training (random halves of the one dataset, 300 steps).

    Measured: the mixture mean 0.8-0.9 (EM's slope 1.08 ± 0.15), the minority mean about 0.25 (SE
    0.03; EM's own slope 1.04 ± 0.23) against 0.03 with halves. 0.5 is not reached for the minority
    mean, with any training family tried, even datasets drawn from the shifted truths themselves
    (0.50-0.57): at this overlap EM splits a shift between the minority's mean, the weights and the
    majority's mean differently on every draw, and H learns a smoother split. docs/methods.md.
    """
    x = None
    responses = {}
    for name, ple in {"many datasets": {"steps": 1000, "batch_fraction": 0.1},
                      "halves": {"training": "halves", "batch_fraction": 0.5, "steps": 300}}.items():
        study = _gmm_study(ple)
        x = study.draw_real(200, generator(0, "real", 0)) if x is None else x
        fitted = study.fit(real_dataset(x), "hyper_mle", generator(0, "fit"))
        responses[name] = study.response_metrics(fitted)
    gain = responses["many datasets"]["response_minority_mean"] - responses["halves"]["response_minority_mean"]
    assert gain.mean() > 4 * gain.std() / len(gain) ** 0.5
    assert responses["halves"]["response_minority_mean"].mean() < 0.1
    mixture = responses["many datasets"]["response_mixture_mean"]
    assert mixture.mean() - 2 * mixture.std() / len(mixture) ** 0.5 > 0.5
    headline = responses["many datasets"]["response"]
    assert torch.equal(headline, responses["many datasets"]["response_minority_mean"])  # the lower one


@pytest.mark.slow
def test_regime_of_the_imbalanced_low_data_corner(tmp_path, prefect_api):
    """Weight 0.95, n = 50, replace loop, the default hypernetwork and training, 32 seeds.

    Measured (and asserted only as far as the data go): both estimators collapse, KL growing
    over generations by many standard errors; the paired difference KL_MLE - KL_PLE at the last
    generation is within 4 standard errors of zero, i.e. at this scale PLE is not shown to beat
    MLE here (64 seeds gave -0.003 +- 0.092). The paper reports PLE better in this corner.
    """
    params = write_params(tmp_path, gmm={"methods": ["mle", "ple"], "seeds": 32, "generations": 5,
                                         "grid": {"weight": [0.95], "n_samples": [50]}})
    tidy = study_flow(study="gmm", params_file=str(params), root=str(tmp_path))
    kl = tidy[tidy.metric == "kl"].pivot_table(index=["seed", "generation"], columns="method", values="value")
    for method in ("mle", "ple"):
        growth = kl[method].xs(4, level="generation") - kl[method].xs(0, level="generation")
        assert growth.mean() > 4 * growth.std() / len(growth) ** 0.5, method
    last = kl.xs(4, level="generation")
    diff = last["mle"] - last["ple"]
    assert abs(diff.mean()) < 4 * diff.std() / len(diff) ** 0.5


def test_three_components_in_two_dimensions(tmp_path):
    """K and d come from params: a 3-component 2-D mixture runs through fit, evaluate and sample."""
    from tasks import loop
    from tasks.studies.gmm.study import GMMStudy
    from tasks.studies import load_params

    path = write_params(tmp_path, gmm={"means": [[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]], "stds": [[1.0, 1.0]] * 3,
                                       "weights": [1.0, 1.0], **TINY})
    params = load_params(path)
    study = GMMStudy(params.gmm, 0.6, 80, 0.1, GridPoint({"weight": 0.6, "n_samples": 80}))
    data = loop.real_dataset(study.draw_real(80, loop.generator(0, "real", 0)))
    assert data.values.shape == (3, 80, 2)
    torch.testing.assert_close(study.truth().weights[0], torch.tensor([0.6, 0.2, 0.2], dtype=torch.float64))
    for method in ("mle", "ple"):
        model = study.fit(data, method, loop.generator(0, "fit", method, 0))
        metrics = study.evaluate(model, data)
        assert {"kl", "weight_3", "mean_2_1", "mean_2_2", "std_3_2", "min_weight", "min_weight_ratio"} <= set(metrics)
        assert study.sample(model, 10, 1.0, loop.generator(0, "sample")).shape == (3, 10, 2)



def test_smallest_weight_is_the_least_weight_of_any_component_and_its_ratio_to_the_truths():
    """True weights 0.8, 0.2 (smallest 0.2); per seed the estimates 0.7 / 0.3, 0.5 / 0.5 and 0.1 / 0.9 (the
    smallest now in the true majority's place): min_weight 0.3, 0.5, 0.1 and min_weight_ratio 1.5, 2.5, 0.5."""
    params = load_params(ROOT / "params.yaml").gmm.model_copy(update={"seeds": 3, "kl_samples": 100})
    study = GMMStudy(params, 0.8, 50, 0.1, GridPoint({"weight": 0.8, "n_samples": 50}))
    estimate = _mixture([[0.7, 0.3], [0.5, 0.5], [0.1, 0.9]], [[0.0], [2.0]], [[1.0], [1.0]], seeds=3)
    metrics = study.evaluate(Fitted(estimate), None)
    assert metrics["min_weight"].tolist() == pytest.approx([0.3, 0.5, 0.1], abs=1e-15)
    assert metrics["min_weight_ratio"].tolist() == pytest.approx([1.5, 2.5, 0.5], abs=1e-14)


def test_every_lambda_sweep_point_fits_with_its_own_lambda_and_form(tmp_path):
    """Each ple point of gmm_lambda gives the estimate of the gmm study's ple at that weight and n with
    ple.lam and ple.form set to the point's values, and the points differ: lambdas and forms reach the fits."""
    section = yaml.safe_load((ROOT / "params.yaml").read_text())["gmm"]
    tiny = {"seeds": 2, "ple": {**section["ple"], "steps": 5}, "grid": {"weight": [0.9], "n_samples": [30]},
            "lambda_sweep": {"lams": [0.5, 20.0], "forms": ["paper", "stop_gradient"], "weight": 0.9, "n_samples": 30}}
    points = build_lambda_sweep(load_params(write_params(tmp_path, gmm=tiny)), tmp_path)[1:]
    x = real_dataset(points[0].draw_real(30, generator(0, "real", 0)))
    means = []
    for study in points:
        lam, form = study.point.coordinates["lam"], study.point.coordinates["form"]
        alone = {**tiny, "ple": {**tiny["ple"], "lam": lam, "form": form}}
        (reference,) = build_grid(load_params(write_params(tmp_path / f"{lam}-{form}", gmm=alone)), tmp_path)
        estimate = study.fit(x, "ple", generator(0, "fit")).estimate
        expected = reference.fit(x, "ple", generator(0, "fit")).estimate
        for name in ("weights", "means", "stds"):
            torch.testing.assert_close(getattr(estimate, name), getattr(expected, name), rtol=0, atol=0)
        means.append(estimate.means)
    assert len(means) == 4 and all(not torch.equal(a, b) for i, a in enumerate(means) for b in means[i + 1:])


def test_kl_standard_error_is_the_spread_of_repeated_estimates():
    """Over 200 independent estimates with m = 400 draws each, the reported SE matches their standard
    deviation (within 15%: the sd of 200 draws has a relative SE of 5%)."""
    p = _mixture([0.8, 0.2], [[0.0], [2.0]], [[1.0], [1.0]], seeds=200)
    q = _mixture([0.5, 0.5], [[0.5], [2.5]], [[1.5], [0.7]], seeds=200)
    kl, se = kl_monte_carlo(p, q, 400, torch.Generator().manual_seed(3))
    assert abs(float(se.mean() / kl.std()) - 1) < 0.15


def test_mixture_samples_scale_each_components_spread_by_the_root_of_lambda_with_fresh_noise_per_seed():
    """Two seeds with the same components (stds 0.5 and 3): each component's draws have variance
    lambda * std^2, and the seeds' draws differ."""
    lam = 0.5
    mixture = _mixture([0.5, 0.5], [[-10.0], [10.0]], [[0.5], [3.0]], seeds=2)
    x = mixture.sample(100_000, lam, torch.Generator().manual_seed(4))
    assert not torch.equal(x[0], x[1])
    for side, std in ((x < 0, 0.5), (x > 0, 3.0)):
        values = x[side]
        se = lam * std ** 2 * (2 / values.numel()) ** 0.5  # sd of a normal sample variance
        assert abs(float(values.var()) - lam * std ** 2) < 4 * se


def test_reparameterised_draws_pick_components_by_weight_and_scale_each_spread_by_the_root_of_lambda():
    """GMMGenerator.rsample (Gumbel-max pick, straight-through) with three separated components, weights
    0.2, 0.3, 0.5 and stds 0.5, 1, 2 at lambda = 0.5: each component's share of the draws is its weight
    (binomial SE) and its draws have variance lambda * std^2 (SE of a normal sample variance)."""
    lam, n, weights, stds = 0.5, 200_000, [0.2, 0.3, 0.5], [0.5, 1.0, 2.0]
    gmm = GMMGenerator(3, 1)
    with torch.no_grad():
        gmm.logits.copy_(torch.tensor(weights).log())
        gmm.means.copy_(torch.tensor([[-20.0], [0.0], [20.0]]))
        gmm.log_stds.copy_(torch.tensor(stds).log()[:, None])
    y = gmm.rsample(gmm.noise(n, torch.Generator().manual_seed(5)), lam)[:, 0].detach().double()
    for part, weight, std in zip((y < -10, y.abs() <= 10, y > 10), weights, stds):
        assert abs(float(part.double().mean()) - weight) < 4 * (weight * (1 - weight) / n) ** 0.5
        se = lam * std ** 2 * (2 / int(part.sum())) ** 0.5
        assert abs(float(y[part].var()) - lam * std ** 2) < 4 * se


def test_points_are_assigned_to_their_nearest_component_per_seed():
    """Two seeds whose components sit in opposite orders: each point goes to its own seed's nearest one."""
    mixture = _mixture([0.5, 0.5], [[-5.0], [5.0]], [[1.0], [1.0]], seeds=2)
    mixture = Mixture(mixture.weights, mixture.means * torch.tensor([1.0, -1.0])[:, None, None], mixture.stds)
    x = torch.tensor([-4.0, 6.0, 5.5])[None, :, None].expand(2, -1, -1)
    assert mixture.assign(x).tolist() == [[0, 1, 1], [1, 0, 0]]


def test_bounded_keeps_diverging_raw_parameters_within_the_stated_bounds():
    """Logits in [-30, 30] (so two logits beyond the same bound weigh alike), means in [-1e3, 1e3], stds in
    [1e-3, e^7]; sensible values pass unchanged."""
    big = torch.tensor([[-1e6, 1e6]])
    mixture = bounded(torch.tensor([[35.0, 1e4], [-1e4, -35.0]]), big[..., None].expand(2, -1, 1),
                      big[..., None].expand(2, -1, 1) / 1e3)
    assert mixture.weights.flatten().tolist() == pytest.approx([0.5] * 4)
    assert mixture.means.flatten().tolist() == [-1e3, 1e3] * 2
    assert mixture.stds.flatten().tolist() == pytest.approx([1e-3, math.exp(7)] * 2)
    same = bounded(torch.tensor([[0.0, math.log(3)]]), torch.tensor([[[1.5], [-2.0]]]), torch.tensor([[[0.5], [-1.0]]]))
    assert same.weights.flatten().tolist() == pytest.approx([0.25, 0.75])
    assert same.means.flatten().tolist() == [1.5, -2.0]
    assert same.stds.flatten().tolist() == pytest.approx([math.exp(0.5), math.exp(-1.0)])


def test_draws_and_kl_depend_on_the_given_generator_alone():
    """Same seed, same numbers whatever torch's global random state; another seed, other numbers."""
    p = _mixture([0.3, 0.7], [[0.0], [2.0]], [[1.0], [0.5]], seeds=2)
    q = _mixture([0.5, 0.5], [[0.5], [2.5]], [[1.5], [0.7]], seeds=2)
    gmm = GMMGenerator(2, 1)

    def draws(global_seed: int, seed: int = 0) -> list[torch.Tensor]:
        torch.manual_seed(global_seed)
        return [p.sample(50, 1.0, torch.Generator().manual_seed(seed)),
                *kl_monte_carlo(p, q, 50, torch.Generator().manual_seed(seed)),
                gmm.noise(50, torch.Generator().manual_seed(seed))]

    first, again, other = draws(1), draws(2), draws(1, seed=9)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not any(torch.equal(a, b) for a, b in zip(first, other))


def test_the_component_pick_passes_the_gradient_of_the_tempered_softmax_straight_through():
    """y = pick @ means with pick = one_hot(argmax) + soft - soft.detach(), soft = softmax((log w + g) / tau),
    tau = 0.5: the forward value is the argmax component's mean, the gradient in the logits is
    (diag(soft) - soft soft^T) means / tau (K = 2, means -1 and 1, Gumbel draws (0.1, 0), no spread: eps = 0)."""
    gmm = GMMGenerator(2, 1)
    y = gmm.rsample(torch.tensor([[0.1, 0.0, 0.0]]))
    y.sum().backward()
    soft = torch.softmax(torch.tensor([0.1, 0.0]) / 0.5, 0)
    expected = (torch.diag(soft) - soft[:, None] * soft[None]) @ torch.tensor([-1.0, 1.0]) / 0.5
    assert y.item() == -1.0
    torch.testing.assert_close(gmm.logits.grad, expected)


@pytest.mark.parametrize("methods", [["mle", "ple"], ["ple"], ["hyper_mle", "mle"]])
def test_the_kl_difference_heatmap_is_drawn_only_where_mle_and_ple_both_ran(tmp_path, methods):
    """`gmm.methods` may leave mle or ple out: the figures are those the methods that ran allow."""
    records = [{"generation": g, "metrics": {"kl": [0.1, 0.2, 0.3]}} for g in range(2)]
    tidy = pd.concat([tidy_rows("gmm", method, records).assign(weight=0.8, n_samples=50) for method in methods],
                     ignore_index=True)
    paths = StudyPaths(tmp_path, "gmm")
    drawn = grid_figures([], None, tidy, curves(tidy, ["weight", "n_samples"]), paths)
    expected = ["kl_difference.png"] * ({"mle", "ple"} <= set(methods)) + ["kl_curves.png"]
    assert [path.name for path in drawn] == expected and all(path.exists() for path in drawn)

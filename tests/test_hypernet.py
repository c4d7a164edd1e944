"""The hypernetwork and the PLE objective: per-tensor heads that start at the target, no tiling,
permutation invariance, gradients to every parameter of phi for every penalty form, penalty
scales, the training families' draws, buffers kept, bad settings rejected."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models.gmm import GMMGenerator
from models.hypernet import FactorisedHead, HyperConfig, HyperNetwork, parameter_count, tensor_scale
from models.ple import (FORMS, PENALTIES, TRAININGS, Generative, HyperEnsemble, PLEConfig, distance, draw_indices,
                        Fitted, fit_direct, fit_ensemble, ple_terms)


def _target() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 2))


def _zero_data_path(hyper: HyperNetwork) -> None:
    with torch.no_grad():
        for head in hyper.heads:
            for p in head.parameters():
                p.zero_()


HEADS = ["linear", "lowrank"]


@pytest.mark.parametrize("head", HEADS)
def test_starts_from_the_target_and_reproduces_it_without_the_data_path(head):
    target = _target().eval()
    hyper = HyperNetwork(target, in_features=4, config=HyperConfig(head=head, rank=2))
    for base, p in zip(hyper.bases, target.parameters()):
        torch.testing.assert_close(base, p.detach(), rtol=0, atol=0)
    _zero_data_path(hyper)
    data, inputs = torch.randn(30, 4), torch.randn(8, 3)
    weights = hyper(data)
    assert set(weights) == {name for name, _ in target.named_parameters()}  # buffers are not emitted
    torch.testing.assert_close(hyper.run_target(weights, inputs), target(inputs), rtol=0, atol=0)


@pytest.mark.parametrize("head", HEADS)
def test_output_is_invariant_to_the_order_of_the_batch(head):
    hyper = HyperNetwork(_target(), in_features=4, config=HyperConfig(head=head))
    data = torch.randn(50, 4)
    shuffled = data[torch.randperm(50)]
    for a, b in zip(hyper(shuffled).values(), hyper(data).values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert [w.shape for w in hyper(data[:3]).values()] == [w.shape for w in hyper(data).values()]  # any n


@pytest.mark.parametrize("head", HEADS)
def test_the_data_path_starts_near_a_tenth_of_each_tensors_scale(head):
    target = nn.Sequential(nn.Linear(64, 128), nn.SiLU(), nn.Linear(128, 32))
    hyper = HyperNetwork(target, in_features=4, config=HyperConfig(head=head, hidden=32, rank=8))
    with torch.no_grad():
        deltas = hyper.deltas(torch.randn(100, 4) * 3)
    for delta, p in zip(deltas, target.parameters()):
        if p.dim() == 2:
            ratio = float(delta.std() / p.detach().std())
            assert 0.005 < ratio < 0.5, ratio


def test_no_tiling_the_data_dependent_parts_of_equal_sized_tensors_differ():
    """Two tensors of the same shape move in different directions when the data change."""
    torch.manual_seed(0)
    target = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 16))
    hyper = HyperNetwork(target, in_features=2, config=HyperConfig(head="lowrank", hidden=16, rank=4))
    with torch.no_grad():
        first, second = hyper.deltas(torch.randn(50, 2)), hyper.deltas(torch.randn(50, 2) + 2)
    moves = [(a - b).reshape(-1) for a, b in zip(first, second)]
    weights = [moves[0], moves[2], moves[4]]  # the three 16 x 16 matrices
    for i in range(3):
        for j in range(i + 1, 3):
            cosine = float(torch.nn.functional.cosine_similarity(weights[i], weights[j], dim=0))
            assert abs(cosine) < 0.9, cosine


def test_lowrank_is_factorised_where_that_is_cheaper_and_exact_for_small_tensors():
    hyper = HyperNetwork(nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 2)), in_features=2,
                         config=HyperConfig(head="lowrank", hidden=32, rank=8))
    kinds = [type(head).__name__ for head in hyper.heads]
    assert kinds == ["FactorisedHead", "FactorisedHead", "FactorisedHead", "FullHead"]
    gmm = HyperNetwork(GMMGenerator(2, 1), in_features=1, config=HyperConfig(head="lowrank", hidden=32))
    assert all(type(head).__name__ == "FullHead" for head in gmm.heads)


def test_output_depends_on_the_data():
    hyper = HyperNetwork(_target(), in_features=4)
    first, second = hyper(torch.randn(50, 4)), hyper(torch.randn(50, 4) + 3)
    assert not all(torch.allclose(first[k], second[k]) for k in first)


def test_buffers_stay_buffers_of_the_target():
    target = _target().train()
    hyper = HyperNetwork(target, in_features=4)
    before = target[1].running_mean.clone()
    hyper.run_target(hyper(torch.randn(20, 4)), torch.randn(16, 3) + 5)
    assert not torch.equal(target[1].running_mean, before)  # batch norm updated its own statistics
    assert all(p is not q for p in hyper.parameters() for q in target.parameters())
    assert parameter_count(hyper) > 0 and "running_mean" not in " ".join(hyper.names)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("head", HEADS)
def test_ple_gradients_reach_every_hypernetwork_parameter(head, form):
    torch.manual_seed(1)
    hyper = HyperNetwork(GMMGenerator(k=2, d=1), in_features=1, config=HyperConfig(head=head, hidden=16))
    x = torch.randn(40, 1)
    fit, penalty = ple_terms(hyper, x, hyper.target.noise(40, torch.Generator().manual_seed(0)), form=form)
    assert penalty > 0
    (fit + 0.5 * penalty).backward()
    for name, p in hyper.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_penalty_gradient_flows_through_the_samples():
    """With lambda only, phi still moves: the penalty reaches phi through Y = rsample(H(X))."""
    torch.manual_seed(2)
    hyper = HyperNetwork(GMMGenerator(k=2, d=1), in_features=1, config=HyperConfig(hidden=16))
    _, penalty = ple_terms(hyper, torch.randn(40, 1), hyper.target.noise(40, torch.Generator().manual_seed(0)))
    penalty.backward()
    assert hyper.encoder[0].weight.grad.abs().sum() > 0


def _small_gmm_hyper(seed: int) -> tuple[HyperNetwork, torch.Tensor, torch.Tensor]:
    """A hypernetwork of a 2-component 1-D mixture, 40 data points and their noise."""
    torch.manual_seed(seed)
    hyper = HyperNetwork(GMMGenerator(k=2, d=1), in_features=1, config=HyperConfig(hidden=16))
    return hyper, torch.randn(40, 1), hyper.target.noise(40, torch.Generator().manual_seed(0))


def test_stop_gradient_keeps_the_penalty_from_moving_h_where_it_reads_the_samples():
    """paper and stop_gradient have the same value; their gradients differ (H(Y)'s part is cut)."""
    hyper, x, noise = _small_gmm_hyper(4)
    grads = {}
    for form in ("paper", "stop_gradient"):
        hyper.zero_grad()
        _, penalty = ple_terms(hyper, x, noise, form=form)
        penalty.backward()
        grads[form] = (float(penalty.detach()), hyper.encoder[0].weight.grad.clone())
    assert grads["paper"][0] == pytest.approx(grads["stop_gradient"][0])
    assert not torch.allclose(grads["paper"][1], grads["stop_gradient"][1])


def test_self_fit_adds_the_fit_of_h_to_its_own_samples():
    hyper, x, noise = _small_gmm_hyper(5)
    with torch.no_grad():
        _, paper = ple_terms(hyper, x, noise, form="paper")
        _, self_fit = ple_terms(hyper, x, noise, form="self_fit")
        theta = hyper(x)
        y = hyper.run_target(theta, noise, op="rsample")
        own = hyper.run_target(hyper(y), y, noise, op="nll")
    torch.testing.assert_close(self_fit, paper + own)


class _Location(Generative):
    """N(mu, I) in two dimensions with fixed noise: nll = mean_i ||x_i - mu||^2 / 2, Y = mu + noise."""

    NOISE = torch.tensor([[3.4, 1.5], [3.4, 1.5]])

    def __init__(self):
        super().__init__()
        self.mu = nn.Parameter(torch.zeros(2))

    def nll(self, x, noise=None):
        return 0.5 * (x - self.mu).pow(2).sum(-1).mean()

    def noise(self, n, generator):
        return self.NOISE[:n].clone()

    def rsample(self, noise, sampling_bias=1.0):
        return self.mu + sampling_bias ** 0.5 * noise


def _location_hyper() -> HyperNetwork:
    """H(X) = b + s W mean(X) with b = (-2, -2), s W = 2 I: no encoder layers, one full head.

    On X = {(0, 0), (2, 2)} (mean m = (1, 1)) and the noise (3.4, 1.5) for both points, by hand:
    theta = H(X) = b + 2m = (0, 0); fit = (0 + 8) / 2 / 2 = 2; Y = theta + noise = (3.4, 1.5) twice;
    H(Y) = b + 2 mean(Y) = (4.8, 1.0); d = H(Y) - H(X) = (4.8, 1.0); ||d||^2 = 24.04 over P = 2 entries;
    s = init_scale = 0.5 (mu starts at zero), so scaled = 24.04 / 0.25; fit(Y; H(Y)) = (1.4^2 + 0.5^2) / 2.
    """
    hyper = HyperNetwork(_Location(), in_features=2,
                         config=HyperConfig(hidden=2, encoder_depth=0, post_depth=0, head="linear", init_scale=0.5))
    with torch.no_grad():
        hyper.bases[0].copy_(torch.tensor([-2.0, -2.0]))
        hyper.heads[0].weight.copy_(4 * torch.eye(2))
    return hyper


HAND_X = torch.tensor([[0.0, 0.0], [2.0, 2.0]])


@pytest.mark.parametrize("penalty,form,expected", [
    ("sum", "paper", 24.04), ("mean", "paper", 12.02), ("scaled", "paper", 96.16),
    ("sum", "stop_gradient", 24.04), ("sum", "self_fit", 24.04 + 1.105)])
def test_ple_objective_equals_its_value_computed_by_hand(penalty, form, expected):
    hyper = _location_hyper()
    fit, term = ple_terms(hyper, HAND_X, _Location.NOISE, penalty, form)
    assert fit.item() == pytest.approx(2.0) and term.item() == pytest.approx(expected)



class _NoisyFit(_Location):
    """_Location whose fit loss also reads the noise (as a VAE's ELBO does): + mean of its first column."""

    def nll(self, x, noise=None):
        return super().nll(x) + (0.0 if noise is None else noise[:, 0].mean())


def test_every_fit_loss_of_the_objective_reads_the_noise():
    """With the noise's first column 3.4 added to every fit loss: fit 2 + 3.4, self_fit 24.04 + 1.105 + 3.4."""
    hyper = _location_hyper()
    hyper.target = _NoisyFit()
    fit, term = ple_terms(hyper, HAND_X, _Location.NOISE, form="self_fit")
    assert fit.item() == pytest.approx(5.4) and term.item() == pytest.approx(24.04 + 1.105 + 3.4)


@pytest.mark.parametrize("form,expected", [("paper", (19.2, 4.0)), ("stop_gradient", (9.6, 2.0))])
def test_penalty_gradient_reaches_h_through_the_samples_by_the_hand_computed_amount(form, expected):
    """d||d||^2/db: d = s W (b + (s W - I) m + noise) depends on b only through Y, so the gradient is
    2 (sW)^T d = 4 d under `paper` (zero if Y were detached from H) and 2 (sW - I)^T d = 2 d under
    `stop_gradient` (H(Y)'s own parameters cut, Y kept)."""
    hyper = _location_hyper()
    _, term = ple_terms(hyper, HAND_X, _Location.NOISE, form=form)
    term.backward()
    torch.testing.assert_close(hyper.bases[0].grad, torch.tensor(expected))


def test_one_training_step_descends_fit_plus_lambda_times_penalty():
    """One Adam step moves every entry by lr against the sign of its gradient. With lambda = 0.1 the
    gradient in b is (theta - m) + 0.1 * 4 d = (-1, -1) + (1.92, 0.4) = (0.92, -0.6): b moves by (-lr, +lr).
    Dropping lambda's term (-1, -1), flipping its sign (-2.92, -1.4) or weighing it by 1 (18.2, 3) moves
    b otherwise."""
    ensemble = HyperEnsemble(_location_hyper, 1, PLEConfig())
    before = ensemble.params["hyper.bases.0"].detach().clone()
    curve = ensemble.train(HAND_X[None], PLEConfig(lam=0.1, steps=1, lr=0.01), torch.Generator())
    assert curve.fit == pytest.approx([2.0]) and curve.penalty == pytest.approx([24.04])
    torch.testing.assert_close(ensemble.params["hyper.bases.0"].detach() - before, torch.tensor([[-0.01, 0.01]]))



def test_training_runs_adam_with_the_targets_betas():
    """Three steps of the ensemble (lambda 0.1, all points every step) equal three steps of torch's Adam with
    the target's betas, here (0.2, 0.5), and config.lr on fit + lambda * penalty of one hypernetwork."""
    class Beta(_Location):
        betas = (0.2, 0.5)

    def make():
        hyper = _location_hyper()
        hyper.target = Beta()
        return hyper

    config = PLEConfig(lam=0.1, steps=3, lr=0.05)
    ensemble = HyperEnsemble(make, 1, config)
    ensemble.train(HAND_X[None], config, torch.Generator())
    hyper = make()
    adam = torch.optim.Adam(hyper.parameters(), lr=0.05, betas=(0.2, 0.5))
    for _ in range(3):
        fit, term = ple_terms(hyper, HAND_X, _Location.NOISE)
        adam.zero_grad()
        (fit + 0.1 * term).backward()
        adam.step()
    for name, p in hyper.named_parameters():
        torch.testing.assert_close(ensemble.params[f"hyper.{name}"][0].detach(), p.detach())


def test_each_training_step_fits_the_points_drawn_for_it():
    """With halves at batch_fraction 0.5, the first step's fit term is that of the two points
    `draw_indices` gives for the training generator's first draw, not that of all four."""
    x = torch.tensor([[[0.0, 0.0], [2.0, 2.0], [8.0, -4.0], [-6.0, 5.0]]])
    config = PLEConfig(lam=0.1, steps=1, lr=0.01, batch_fraction=0.5)
    curve = HyperEnsemble(_location_hyper, 1, PLEConfig()).train(x, config, torch.Generator().manual_seed(7))
    replay = torch.Generator().manual_seed(7)
    rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=replay)))
    index = draw_indices(config, 1, 4, None, replay, rng)[0]
    with torch.no_grad():
        drawn, _ = ple_terms(_location_hyper(), x[0, index], _Location.NOISE)
        everything, _ = ple_terms(_location_hyper(), x[0], _Location.NOISE)
    assert curve.fit == pytest.approx([drawn.item()]) and drawn.item() != pytest.approx(everything.item())


@pytest.mark.parametrize("penalty", PENALTIES)
def test_penalty_scales(penalty):
    """sum: squared distance over entries; mean: divided by P; scaled: each tensor divided by s_t^2."""
    hyper = HyperNetwork(GMMGenerator(k=2, d=1), in_features=1, config=HyperConfig(hidden=8))
    theta = {name: torch.zeros_like(w) for name, w in hyper(torch.randn(5, 1)).items()}
    other = {name: torch.full_like(w, 2.0) for name, w in theta.items()}  # 6 entries, each 4 apart squared
    expected = {"sum": 24.0, "mean": 4.0, "scaled": sum(2 * 4.0 / s ** 2 for s in hyper.scales)}[penalty]
    assert float(distance(hyper, theta, other, penalty)) == pytest.approx(expected)


def test_reweighted_draws_vary_the_group_shares_and_follow_the_dirichlet_mean():
    """Each draw has its own group shares; over many draws the minority share averages 1/K (K = 2)."""
    groups = torch.tensor([[0] * 90 + [1] * 10])
    config = PLEConfig(training="reweighted", batch_fraction=0.5, concentration=1.0)
    generator, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    shares = torch.stack([(groups[0, draw_indices(config, 1, 100, groups, generator, rng)[0]] == 1).double().mean()
                          for _ in range(400)])
    # Dirichlet(1, 1): the share is U[0, 1] (mean 1/2, sd 0.29), plus binomial noise of 50 draws.
    assert abs(float(shares.mean()) - 0.5) < 4 * 0.3 / 400 ** 0.5
    assert float(shares.std()) > 0.25
    bootstrap = PLEConfig(training="bootstrap", batch_fraction=0.5)
    plain = torch.stack([(groups[0, draw_indices(bootstrap, 1, 100, groups, generator, rng)[0]] == 1).double().mean()
                         for _ in range(400)])
    assert abs(float(plain.mean()) - 0.1) < 4 * 0.043 / 400 ** 0.5  # sd of a share of 50 draws at p = 0.1


def test_reweighted_training_without_groups_is_refused():
    ensemble = HyperEnsemble(lambda: HyperNetwork(GMMGenerator(2, 1), 1, HyperConfig(hidden=8)), 2, PLEConfig())
    with pytest.raises(ValueError, match=r"^training 'reweighted' needs the group of every point; use halves or "
                                         r"bootstrap$"):
        ensemble.train(torch.randn(2, 20, 1), PLEConfig(training="reweighted", steps=1), torch.Generator())


def test_halves_draw_distinct_points_per_seed_from_the_generator():
    """batch_fraction 0.5 of n = 10: five distinct indices per seed, new per seed, the same for the same generator."""
    draw = lambda: draw_indices(PLEConfig(batch_fraction=0.5), 3, 10, None, torch.Generator().manual_seed(0),  # noqa: E731
                                np.random.default_rng(0))
    index = draw()
    assert index.shape == (3, 5) and all(len(set(row.tolist())) == 5 for row in index)
    assert int(index.min()) >= 0 and int(index.max()) < 10 and len({tuple(row.tolist()) for row in index}) == 3
    assert torch.equal(index, draw())
    assert draw_indices(PLEConfig(), 3, 10, None, torch.Generator(), np.random.default_rng(0)) is None


@pytest.mark.parametrize("field,value,message", [
    ("penalty", "max", "unknown penalty 'max'; use one of sum, mean, scaled"),
    ("form", "anchor", "unknown form 'anchor'; use one of paper, self_fit, stop_gradient"),
    ("training", "halfs", "unknown training 'halfs'; use one of halves, bootstrap, reweighted"),
    ("concentration", 0.0, "concentration must be > 0, got 0.0")])
def test_bad_ple_settings_are_rejected(field, value, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        PLEConfig(**{field: value})


def test_ensemble_training_lowers_every_seeds_fit_loss():
    torch.manual_seed(3)
    x = torch.randn(3, 60, 1) + torch.tensor([-2.0, 0.0, 2.0])[:, None, None]
    ensemble = HyperEnsemble(lambda: HyperNetwork(GMMGenerator(2, 1), 1, HyperConfig(hidden=16)), 3, PLEConfig())
    curve = ensemble.train(x, PLEConfig(lam=0.1, steps=150, lr=2e-2), torch.Generator().manual_seed(0))
    assert curve.fit[-1] < curve.fit[0] - 0.3 and len(curve.penalty) == 150
    weights = ensemble.weights(x)
    assert weights["means"].shape == (3, 2, 1)
    # Each seed's hypernetwork has learned where its own data lie.
    centre = (weights["logits"].softmax(-1)[..., None] * weights["means"]).sum(dim=(1, 2))
    torch.testing.assert_close(centre, x.mean(dim=(1, 2)), atol=0.3, rtol=0)


class _IntegerParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(3, dtype=torch.long), requires_grad=False)


@pytest.mark.parametrize("target,message", [
    (nn.ReLU(), "ReLU has no parameters for a hypernetwork to emit"),
    (_IntegerParameter(), r"_IntegerParameter: parameters \['table'\] are not real floating point tensors")])
def test_targets_it_cannot_handle_are_rejected(target, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        HyperNetwork(target, in_features=2)


def test_unknown_head_and_bad_rank_are_rejected_and_rank_one_accepted():
    with pytest.raises(ValueError, match="^unknown hypernetwork head 'chunked'; use one of lowrank, linear$"):
        HyperNetwork(_target(), in_features=2, config=HyperConfig(head="chunked"))
    with pytest.raises(ValueError, match="^hypernetwork rank must be >= 1, got 0$"):
        HyperNetwork(_target(), in_features=2, config=HyperConfig(rank=0))
    assert HyperNetwork(_target(), in_features=2, config=HyperConfig(head="lowrank", rank=1)).names


def test_tensor_scales_by_hand():
    """s_t = init_scale / sqrt(fan_in) for a matrix (fan_in = entries of one row: 4 for (1, 4), 8 for (5, 4, 2));
    init_scale x RMS for a vector (RMS of (0.3, -0.4) = sqrt(0.125)), init_scale for a zero vector."""
    cases = [(torch.ones(1, 4), 1.0), (torch.ones(5, 4, 2), 2 / 8 ** 0.5), (torch.tensor([0.3, -0.4]), 2 * 0.125 ** 0.5),
             (torch.zeros(3), 2.0)]
    for p, expected in cases:
        assert tensor_scale(p, 2.0) == pytest.approx(expected), p.shape


@pytest.mark.parametrize("shape", [(6,), (5, 7), (6, 4, 2)])
def test_a_factorised_heads_cost_is_its_parameter_count(shape):
    """cost(h, shape, r) = r (rows + columns) + r^2 h for a matrix, r n + r h for a vector: what the head holds."""
    head = FactorisedHead(16, torch.Size(shape), 3)
    assert FactorisedHead.cost(16, torch.Size(shape), 3) == parameter_count(head)


@pytest.mark.parametrize("penalty,form,expected", [("mean", "paper", 12.02), ("scaled", "paper", 96.16),
                                                   ("sum", "self_fit", 24.04 + 1.105)])
def test_the_ensemble_trains_on_the_configured_penalty_and_form(penalty, form, expected):
    """HyperEnsemble's objective is the hand-computed one of its PLEConfig's penalty and form."""
    ensemble = HyperEnsemble(_location_hyper, 1, PLEConfig(penalty=penalty, form=form))
    fit, term = ensemble.terms(HAND_X[None], _Location.NOISE[None])
    assert fit.tolist() == pytest.approx([2.0]) and term.tolist() == pytest.approx([expected])


def test_a_group_of_one_point_gets_its_dirichlet_share_of_the_draws():
    """P(i) = w_g / n_g with n_g = 1 for the lone point of group 0: over 400 steps its share of the draws
    averages E[w_0] = 1/2 (sd of one step's share about 0.3), not less."""
    groups = torch.tensor([[0] + [1] * 99])
    config = PLEConfig(training="reweighted", batch_fraction=0.5)
    generator, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    shares = torch.stack([(draw_indices(config, 1, 100, groups, generator, rng) == 0).double().mean()
                          for _ in range(400)])
    assert abs(float(shares.mean()) - 0.5) < 4 * 0.3 / 400 ** 0.5


def test_reweighted_draws_give_every_seed_its_own_group_shares():
    """One Dirichlet(1, 1) draw per seed: across 300 seeds the minority share of a step's data spreads like
    U[0, 1] (sd 0.29, plus binomial noise), not like one share shared by all seeds (binomial sd <= 0.07)."""
    groups = torch.tensor([[0] * 90 + [1] * 10]).expand(300, -1)
    index = draw_indices(PLEConfig(training="reweighted", batch_fraction=0.5), 300, 100, groups,
                         torch.Generator().manual_seed(0), np.random.default_rng(0))
    shares = (groups.gather(1, index) == 1).double().mean(dim=1)
    assert float(shares.std()) > 0.25


def _fit(fit, training: str, global_seed: int, seed: int = 0, seeds: int = 2, **config) -> Fitted:
    """A three-step fit on a fixed dataset of two seeds, torch's and numpy's global random state set first."""
    x = torch.randn(seeds, 40, 1, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(global_seed)
    np.random.seed(global_seed)
    config = PLEConfig(steps=3, training=training, batch_fraction=0.5, **config)

    def make():  # initial means drawn from torch's random state, as a network's initial weights are
        gmm = GMMGenerator(2, 1)
        with torch.no_grad():
            gmm.means.add_(torch.randn_like(gmm.means))
        return gmm
    if fit is fit_direct:
        return fit_direct(make, x, config, torch.Generator().manual_seed(seed))
    return fit_ensemble(make, x, HyperConfig(hidden=8), config, torch.Generator().manual_seed(seed),
                        groups=(x[..., 0] > 0.5).long())


@pytest.mark.parametrize("fit,training", [(fit_ensemble, t) for t in TRAININGS] + [(fit_direct, "halves")])
def test_same_seed_same_fit_whatever_the_global_random_state(fit, training):
    """Initial weights, batches and group shares come from the fit's generator alone: equal generators give
    equal estimates after the global random state changed; another seed gives another estimate."""
    first, again, other = (_fit(fit, training, 1).estimate, _fit(fit, training, 2).estimate,
                           _fit(fit, training, 1, seed=5).estimate)
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not all(torch.equal(first[name], other[name]) for name in first)


def test_direct_fits_ignore_lambda_and_the_training_datasets():
    """fit_direct is the plain MLE: PLEConfig's lam and training (bootstrap here) change nothing."""
    plain = _fit(fit_direct, "halves", 1).estimate
    for name, value in _fit(fit_direct, "bootstrap", 1, lam=5.0).estimate.items():
        assert torch.equal(value, plain[name])


@pytest.mark.parametrize("fit", [fit_ensemble, fit_direct])
def test_a_fit_returns_its_training_curve_and_for_hypernetworks_its_ensemble(fit):
    """One mean fit and penalty per step (penalty 0 for the direct fit), the last step's per seed."""
    fitted = _fit(fit, "halves", 1, lam=1.0)
    assert len(fitted.curve.fit) == len(fitted.curve.penalty) == 3 and fitted.curve.final_fit.shape == (2,)
    assert fitted.curve.fit[-1] == pytest.approx(float(fitted.curve.final_fit.mean()))
    assert (fit is fit_direct) == (fitted.ensemble is None) == (fitted.curve.penalty == [0.0] * 3)
    if fit is fit_ensemble:  # two hypernetworks of the given HyperConfig (hidden 8)
        size = parameter_count(HyperNetwork(GMMGenerator(2, 1), 1, HyperConfig(hidden=8)))
        assert sum(p.numel() for p in fitted.ensemble.params.values()) == 2 * size


@pytest.mark.parametrize("fit", [fit_ensemble, fit_direct])
def test_a_single_seed_fits(fit):
    """S = 1 is a valid ensemble: the target, its optimiser settings and H's input size come from seed 0."""
    estimate = _fit(fit, "halves", 1, seeds=1).estimate
    assert all(value.shape[0] == 1 and torch.isfinite(value).all() for value in estimate.values())

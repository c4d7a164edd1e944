"""The GAN: spectral normalisation, the losses, and two-player training in the PLE engine."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from models.gan import GAN, GANConfig, PRESETS
from models.hypernet import HyperConfig, HyperNetwork
from models.networks import SNConv2d, SNLinear, spectral
from models.ple import HyperEnsemble, PLEConfig, TargetEnsemble, fit_direct
from tasks.errors import ParamsError
from tasks.studies import load_params
from tasks.studies.images.study import make_generator

from conftest import ROOT


@pytest.mark.parametrize("shape", [(64, 32), (1, 50), (16, 3, 4, 4), (128, 128)])
def test_spectral_normalisation_leaves_largest_singular_value_near_one(shape):
    """Power iteration from a fixed start: sigma of W / sigma_hat(W) within 5% of 1 (from above: the
    estimate never exceeds the true sigma), on random and on ill-conditioned matrices."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=g)
    w[0] *= 10  # one dominant direction, as a trained layer has
    for weight in (torch.randn(shape, generator=g), w):
        sigma = torch.linalg.matrix_norm(spectral(weight).flatten(1), ord=2)
        assert 1 - 1e-5 <= float(sigma) < 1.05


def test_spectral_layers_use_the_normalised_weight():
    layer, conv = SNLinear(6, 3), SNConv2d(2, 4, 3, padding=1)
    x = torch.randn(5, 6)
    assert torch.allclose(layer(x), x @ spectral(layer.weight).T + layer.bias, atol=1e-6)
    y = torch.randn(1, 2, 5, 5)
    expected = torch.nn.functional.conv2d(y, spectral(conv.weight), conv.bias, padding=1)
    assert torch.allclose(conv(y), expected, atol=1e-6)


@pytest.mark.parametrize("preset,shape", [("small", (8, 8)), ("mnist", (28, 28)), ("cifar10", (3, 32, 32))])
def test_every_preset_makes_images_of_the_data_shape_and_scores_them(preset, shape):
    config = PRESETS[preset]
    if preset == "cifar10":  # the ResNet at a width a test can afford
        config = GANConfig(latent=16, channels=16, critic_channels=16, architecture="resnet")
    gan = GAN(shape, config)
    noise = gan.noise(4, torch.Generator().manual_seed(0))
    images = gan.rsample(noise)
    assert images.shape == (4, *shape) and 0 <= float(images.min()) and float(images.max()) <= 1
    real, fake = gan.scores(torch.rand(4, *shape), noise)
    assert real.shape == fake.shape == (4,)
    assert torch.isfinite(gan.adversary_loss(torch.rand(4, *shape), noise))


def test_losses_have_their_closed_form_when_scores_are_small():
    """While every |D| < 1, hinge L_D = 2 - E D(x) + E D(G(z)) and L_G = -E D(G(z)); the non-saturating
    pair are the softplus forms (checked at the same scores)."""
    gan = GAN((8, 8), GANConfig(loss="hinge"))
    x, noise = torch.rand(10, 8, 8), gan.noise(10, torch.Generator().manual_seed(1))
    real, fake = gan.scores(x, noise)
    assert float(torch.cat([real, fake]).abs().max()) < 1
    assert float(gan.adversary_loss(x, noise)) == pytest.approx(float(2 - real.mean() + fake.mean()), abs=1e-5)
    assert float(gan.nll(x, noise)) == pytest.approx(float(-fake.mean()), abs=1e-6)
    saturating = GAN((8, 8), GANConfig(loss="non_saturating"))
    saturating.load_state_dict(gan.state_dict())
    softplus = torch.nn.functional.softplus
    assert float(saturating.adversary_loss(x, noise)) == pytest.approx(
        float(softplus(-real).mean() + softplus(fake).mean()), abs=1e-5)
    assert float(saturating.nll(x, noise)) == pytest.approx(float(softplus(-fake).mean()), abs=1e-6)


def test_critic_scores_each_image_against_the_real_batch():
    """D(y; X): the same fake scores differently against two real batches, and the same against one batch
    whatever fakes accompany it (the reference is the real rows' mean features only)."""
    gan = GAN((8, 8))
    g = torch.Generator().manual_seed(4)
    y, x1, x2, other = (torch.rand(5, 1, 8, 8, generator=g) for _ in range(4))
    first = gan.critic(torch.cat([x1, y]), real=5)[5:]
    assert not torch.allclose(first, gan.critic(torch.cat([x2, y]), real=5)[5:])
    assert torch.allclose(first[:3], gan.critic(torch.cat([x1, y[:3], other]), real=5)[5:8], atol=1e-6)


def test_hypernetwork_emits_the_generator_but_not_the_critic():
    gan = GAN((8, 8))
    hyper = HyperNetwork(gan, 64)
    assert set(hyper.names) == {n for n, _ in gan.named_parameters() if n.startswith("generator.")}
    assert hyper.names and all(not n.startswith("critic.") for n in hyper.names)


@pytest.mark.parametrize("lam", [0.0, 1.0], ids=["hyper_mle", "ple"])
def test_critic_gradient_reaches_the_hypernetwork_and_its_own_loss_does_not(lam):
    """L_G = -D(G_{H(X)}(z)) differentiates through the critic into every parameter of H; the critic's
    own loss reaches the critic only (the generator is held fixed in its step)."""
    seeds, x = 2, torch.rand(2, 12, 8, 8)
    ensemble = HyperEnsemble(lambda: HyperNetwork(GAN((8, 8)), 64, HyperConfig(hidden=16)), seeds,
                             PLEConfig(lam=lam))
    noise = torch.stack([ensemble.target.noise(12, torch.Generator().manual_seed(s)) for s in range(seeds)])
    fit, penalty = ensemble.terms(x, noise)
    (fit + lam * penalty).sum().backward()
    missing = [name for name, p in ensemble.params.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    assert all(p.grad is None for p in ensemble.adversary.values())

    for p in ensemble.params.values():
        p.grad = None
    rival = ensemble.adversary_terms(x, noise)
    generators = ensemble.weights(x)  # the critic plays against G_{H(X)}, not against the target's own weights
    for s in range(seeds):
        weights = {n: w[s] for n, w in generators.items()} | {n: w[s] for n, w in ensemble.adversary.items()}
        expected = functional_call(ensemble.target, weights, (x[s], noise[s]), {"op": "adversary_loss"})
        assert float(rival[s]) == pytest.approx(float(expected), rel=1e-5)
    rival.sum().backward()
    assert all(p.grad is None for p in ensemble.params.values())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ensemble.adversary.values())



@pytest.mark.parametrize("method", ["mle", "hyper_mle"])
def test_every_seeds_losses_are_its_generators_against_its_current_critic(method):
    """Per seed s, with the critics moved off their initial weights: the fit term is the generator loss
    -D(G(z)) and the adversary term the critic's loss, each computed by the GAN itself with seed s's
    generator (its own weights for mle, H(X_s) for hyper_mle) and seed s's current critic."""
    seeds, x = 2, torch.rand(2, 12, 8, 8, generator=torch.Generator().manual_seed(0))
    ensemble = TargetEnsemble(lambda: GAN((8, 8)), seeds) if method == "mle" else \
        HyperEnsemble(lambda: HyperNetwork(GAN((8, 8)), 64, HyperConfig(hidden=16)), seeds, PLEConfig(lam=0.0))
    with torch.no_grad():
        for p in ensemble.adversary.values():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    noise = torch.stack([ensemble.target.noise(12, torch.Generator().manual_seed(s)) for s in range(seeds)])
    fit, penalty = ensemble.terms(x, noise)
    rival = ensemble.adversary_terms(x, noise)
    generators = ensemble.weights() if method == "mle" else ensemble.weights(x)
    for s in range(seeds):
        weights = {n: w[s] for n, w in generators.items()} | {n: w[s] for n, w in ensemble.adversary.items()}
        for value, op in ((fit[s], "nll"), (rival[s], "adversary_loss")):
            expected = functional_call(ensemble.target, weights, (x[s], noise[s]), {"op": op})
            assert float(value) == pytest.approx(float(expected), rel=1e-5), (s, op)
    assert method != "mle" or penalty.tolist() == [0.0, 0.0]


def test_training_moves_both_players_and_keeps_every_seed_apart():
    """mle: one critic step per generator step; after training, each seed's generator and critic differ
    from their start, and a seed's weights depend only on its own data (seed 0 alone gives the same)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 16, 8, 8, generator=g)
    config = PLEConfig(steps=5, lr=1e-3)
    both = fit_direct(lambda: GAN((8, 8)), x, config, torch.Generator().manual_seed(3))
    assert len(both.curve.fit) == 5 and len(both.curve.adversary) == 5
    assert all(isinstance(loss, float) and loss == loss for loss in both.curve.adversary)  # the critic's mean losses
    start = TargetEnsemble(lambda: GAN((8, 8)), 2)  # same construction, untrained
    moved = {name: not torch.equal(both.estimate[name], w) for name, w in start.weights().items()}
    assert any(v for n, v in moved.items() if n.startswith("critic.")) and \
        any(v for n, v in moved.items() if n.startswith("generator."))
    sample = functional_call(GAN((8, 8)), {n: w[0] for n, w in both.estimate.items()},
                             (torch.zeros(3, 16),), {"op": "rsample"})
    assert sample.shape == (3, 8, 8)


def test_a_preset_that_cannot_make_the_images_is_a_params_error():
    section = load_params(ROOT / "params.yaml").mnist_gan.model_copy(update={"preset": "cifar10"})
    with pytest.raises(ParamsError, match=r"^mnist_gan.preset = cifar10: the ResNet generator needs image sides "
                                          r"divisible by 8, got 28x28; choose another preset$"):
        make_generator(section, (28, 28), "mnist_gan")

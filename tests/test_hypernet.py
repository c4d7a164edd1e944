"""The hypernetwork and the PLE objective: exact reproduction of a target, permutation
invariance, gradients to every parameter of phi, buffers kept, bad targets rejected."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.gmm import GMMGenerator
from models.hypernet import HyperConfig, HyperNetwork, parameter_count
from models.ple import HyperEnsemble, PLEConfig, ple_terms


def _target() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 2))


def _set_heads_to_target(hyper: HyperNetwork, target: nn.Module) -> None:
    with torch.no_grad():
        if hyper.config.head == "linear":
            for head, p in zip(hyper.heads, target.parameters()):
                head.weight.zero_()
                head.bias.copy_(p.reshape(-1))
        else:
            hyper.head.weight.zero_()
            hyper.head.bias.zero_()
            hyper.base.copy_(torch.cat([p.reshape(-1) for p in target.parameters()]))


@pytest.mark.parametrize("head", ["linear", "chunked"])
def test_reproduces_the_target_when_heads_hold_its_weights(head):
    target = _target().eval()
    hyper = HyperNetwork(target, in_features=4, config=HyperConfig(head=head, chunk=7))
    _set_heads_to_target(hyper, target)
    data, inputs = torch.randn(30, 4), torch.randn(8, 3)
    weights = hyper(data)
    assert set(weights) == {name for name, _ in target.named_parameters()}  # buffers are not emitted
    torch.testing.assert_close(hyper.run_target(weights, inputs), target(inputs), rtol=0, atol=0)


@pytest.mark.parametrize("head", ["linear", "chunked"])
def test_output_is_invariant_to_the_order_of_the_batch(head):
    hyper = HyperNetwork(_target(), in_features=4, config=HyperConfig(head=head))
    data = torch.randn(50, 4)
    shuffled = data[torch.randperm(50)]
    torch.testing.assert_close(hyper.flat_weights(shuffled), hyper.flat_weights(data), rtol=1e-5, atol=1e-6)
    assert hyper.flat_weights(data[:3]).shape == hyper.flat_weights(data).shape  # any batch size


def test_output_depends_on_the_data():
    hyper = HyperNetwork(_target(), in_features=4)
    assert not torch.allclose(hyper.flat_weights(torch.randn(50, 4)), hyper.flat_weights(torch.randn(50, 4) + 3))


def test_buffers_stay_buffers_of_the_target():
    target = _target().train()
    hyper = HyperNetwork(target, in_features=4)
    before = target[1].running_mean.clone()
    hyper.run_target(hyper(torch.randn(20, 4)), torch.randn(16, 3) + 5)
    assert not torch.equal(target[1].running_mean, before)  # batch norm updated its own statistics
    assert all(p is not q for p in hyper.parameters() for q in target.parameters())
    assert parameter_count(hyper) > 0 and "running_mean" not in " ".join(hyper.names)


@pytest.mark.parametrize("head", ["linear", "chunked"])
def test_ple_gradients_reach_every_hypernetwork_parameter(head):
    torch.manual_seed(1)
    hyper = HyperNetwork(GMMGenerator(k=2, d=1), in_features=1, config=HyperConfig(head=head, hidden=16))
    x = torch.randn(40, 1)
    fit, penalty = ple_terms(hyper, x, hyper.target.noise(40, torch.Generator().manual_seed(0)))
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


def test_ensemble_training_lowers_every_seeds_fit_loss():
    torch.manual_seed(3)
    x = torch.randn(3, 60, 1) + torch.tensor([-2.0, 0.0, 2.0])[:, None, None]
    ensemble = HyperEnsemble(lambda: HyperNetwork(GMMGenerator(2, 1), 1, HyperConfig(hidden=16)), seeds=3)
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


@pytest.mark.parametrize("target,message", [(nn.ReLU(), "has no parameters"),
                                            (_IntegerParameter(), "not real floating point")])
def test_targets_it_cannot_handle_are_rejected(target, message):
    with pytest.raises(ValueError, match=message):
        HyperNetwork(target, in_features=2)


def test_unknown_head_is_rejected():
    with pytest.raises(ValueError, match="unknown hypernetwork head"):
        HyperNetwork(_target(), in_features=2, config=HyperConfig(head="lowrank"))

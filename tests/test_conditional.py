"""The conditional VAE, the per-point loss weights and selective fine-tuning's mask (hand-computed selections)."""

from __future__ import annotations

import copy
import math

import torch
from torch.func import functional_call, vmap

from models.classifier import Classifier, fit_classifier
from models.conditional import ConditionalVAE, RowWeighted
from models.hypernet import HyperConfig, HyperNetwork
from models.ple import sample_weights
from models.vae import VAEConfig
from tasks.studies.fairness.downstream import selection_mask
from tasks.studies.fairness.params import DownstreamParams

CONFIG = VAEConfig(hidden=16, depth=1, latent=3)


def rows(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.rand(n, 16, generator=g), torch.randint(0, 2, (n, 1), generator=g).float()], dim=1)


def test_samples_carry_labels_at_the_given_shares():
    torch.manual_seed(0)
    model = ConditionalVAE((4, 4), CONFIG, (0.3, 0.7))
    weights = {name: p.detach()[None] for name, p in model.named_parameters()}
    n = 20000
    x = sample_weights(model, weights, n, 1.0, torch.Generator().manual_seed(1))[0]
    assert x.shape == (n, 17) and set(x[:, -1].tolist()) == {0.0, 1.0}
    share = x[:, -1].mean().item()
    assert abs(share - 0.7) < 4 * math.sqrt(0.7 * 0.3 / n)
    assert ((x[:, :-1] >= 0) & (x[:, :-1] <= 1)).all()


def test_the_label_conditions_the_loss_and_the_samples():
    torch.manual_seed(0)
    model = ConditionalVAE((4, 4), CONFIG, (0.5, 0.5))
    x, noise = rows(8), model.noise(8, torch.Generator().manual_seed(2))
    flipped = x.clone()
    flipped[:, -1] = 1 - flipped[:, -1]
    assert not torch.allclose(model.row_nll(x, noise), model.row_nll(flipped, noise))
    u = noise.clone()
    u[:, -1] = 0.1  # label 0 for every row
    v = noise.clone()
    v[:, -1] = 0.9  # label 1
    a, b = model.rsample(u), model.rsample(v)
    assert (a[:, -1] == 0).all() and (b[:, -1] == 1).all() and not torch.allclose(a[:, :-1], b[:, :-1])


def test_row_weights_weigh_each_point_and_run_under_vmap():
    torch.manual_seed(0)
    base = ConditionalVAE((4, 4), CONFIG, (0.5, 0.5))
    weighted = RowWeighted(copy.deepcopy(base))
    x, noise = rows(10), base.noise(10, torch.Generator().manual_seed(3))
    ones = torch.cat([x, torch.ones(10, 1)], dim=1)
    assert torch.allclose(weighted.nll(ones, noise), base.nll(x, noise))
    half = torch.cat([x, (torch.arange(10) < 4).float()[:, None]], dim=1)  # weight 1 on the first 4 rows only
    assert torch.allclose(weighted.nll(half, noise), base.row_nll(x, noise)[:4].mean())
    params = {name: p.detach()[None].expand(2, *p.shape) for name, p in weighted.named_parameters()}
    losses = vmap(lambda w, a, e: functional_call(weighted, w, (a, e), {"op": "nll"}))(
        params, torch.stack([ones, half]), torch.stack([noise, noise]))
    assert torch.allclose(losses, torch.stack([base.nll(x, noise), base.row_nll(x, noise)[:4].mean()]))


def classifier_data(seed: int, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 2, (n,), generator=g)


def test_selection_mask_keeps_top_k_percent_and_masked_entries_never_move():
    torch.manual_seed(0)
    model = Classifier(1, 2, 8).eval()
    real, data = classifier_data(0), classifier_data(1)
    balancing = torch.rand(64, generator=torch.Generator().manual_seed(4)) + 0.5
    mask = selection_mask(model, real, data, balancing, top_k=30.0)
    total = sum(m.numel() for m in mask.values())
    chosen = sum(int(m.sum()) for m in mask.values())
    assert chosen == round(0.3 * total)
    before = copy.deepcopy(model)
    tuned = fit_classifier(model, *data, epochs=2, batch_size=16, lr=0.01, generator=torch.Generator().manual_seed(5),
                           device=torch.device("cpu"), mask=mask)
    for name, p in tuned.named_parameters():
        old, keep = dict(before.named_parameters())[name], mask[name].bool()
        assert torch.equal(p[~keep], old[~keep])
        if keep.any():
            assert not torch.equal(p[keep], old[keep])


class SplitLinear(torch.nn.Module):
    """logits (0, x . theta) of rows x (N, 6) with theta = (w.flatten(), v), zero at the start: both classes
    have probability 1/2, so dL/dtheta_j = mean_i (1/2 - y_i) x_ij, half the mean feature when every y_i = 0."""

    def __init__(self):
        super().__init__()
        self.w, self.v = torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.zeros(len(x)), x[:, :4] @ self.w.flatten() + x[:, 4:] @ self.v], dim=1)


def test_selection_mask_updates_the_entries_most_sensitive_to_bias_and_least_to_the_domain():
    """Hand case, entries j = w00 w01 w10 w11 v0 v1, every y = 0. D_g: rows a and 0, balancing weights 3 and 1;
    D_0: the row r. Gradients: g(D_g) = a / 4, g(D_g balanced) = 3 a / 8, g(D_0) = r / 2.

        a                     0  32  24 -16  48  -8
        r                     0  18  24  -8  34 -10
        g(D_g)                0   8   6  -4  12  -2
        g(D_g balanced)       0  12   9  -6  18  -3
        g(D_0)                0   9  12  -4  17  -5
        b = |bal - D_g|       0   4   3   2   6   1
        d = |D_0 - D_g|       0   1   6   0   5   3
        score b - d           0   3  -3   2   1  -2

    top_k 50 %: the 3 largest scores, w01 w11 v0. Ranked otherwise the set differs: d - b {w00 w10 v1},
    b alone {w01 w10 v0}, b + d {w01 w10 v0}, -d {w00 w01 w11}, without the absolute values {w01 v0 v1},
    with b = |bal - D_0| {w00 w01 w11}, with d = |D_0 - bal| {w00 w01 v0}. top_k 1 % still updates one entry."""
    a = torch.tensor([[0.0, 32, 24, -16, 48, -8]])
    r = torch.tensor([[0.0, 18, 24, -8, 34, -10]])
    data = (torch.cat([a, torch.zeros(1, 6)]), torch.zeros(2, dtype=torch.long))
    real = (r, torch.zeros(1, dtype=torch.long))
    mask = selection_mask(SplitLinear(), real, data, torch.tensor([3.0, 1.0]), top_k=50.0)
    assert set(mask) == {"w", "v"}
    assert torch.equal(mask["w"], torch.tensor([[0.0, 1], [0, 1]])) and torch.equal(mask["v"], torch.tensor([1.0, 0]))
    one = selection_mask(SplitLinear(), real, data, torch.tensor([3.0, 1.0]), top_k=1.0)
    assert torch.equal(one["w"], torch.tensor([[0.0, 1], [0, 0]])) and not one["v"].any()


def test_selection_mask_breaks_ties_by_the_earlier_entry():
    """D_0 = D_g and equal weights: every gradient difference is 0, all six scores tie at 0, and top_k 50 %
    updates the first three entries in parameter order (w00 w01 w10)."""
    data = (torch.arange(12.0).view(2, 6), torch.tensor([0, 1]))
    mask = selection_mask(SplitLinear(), data, data, torch.ones(2), top_k=50.0)
    assert torch.equal(mask["w"], torch.tensor([[1.0, 1], [1, 0]])) and not mask["v"].any()


def test_full_mask_selects_everything():
    torch.manual_seed(0)
    model = Classifier(1, 2, 8).eval()
    mask = selection_mask(model, classifier_data(0), classifier_data(1), torch.ones(64), top_k=100.0)
    assert all(bool(m.all()) for m in mask.values())


def test_downstream_params_bounds():
    base = dict(modes=["selective"], features=8, epochs=1, finetune_epochs=1, batch_size=8, lr=0.1, finetune_lr=0.1)
    for k in (0.0, -5.0, 100.5):
        try:
            DownstreamParams(top_k=k, **base)
        except ValueError:
            continue
        raise AssertionError(f"top_k={k} accepted")
    assert DownstreamParams(top_k=100.0, **base).top_k == 100.0


def test_a_hypernetwork_reads_what_each_label_holds_not_only_the_pooled_rows():
    """Two datasets with the same pooled pixel and label means but opposite pixels per label: the
    flat rows cannot tell them apart after mean pooling, the per-label summary features can, and so
    does a hypernetwork's code."""
    model = ConditionalVAE((2, 2), CONFIG, (0.5, 0.5))
    labels = torch.tensor([0.0, 1.0]).repeat(4)[:, None]
    bright_zeros = torch.cat([(1 - labels).expand(-1, 4), labels], dim=1)
    bright_ones = torch.cat([labels.expand(-1, 4), labels], dim=1)
    assert torch.equal(bright_zeros.mean(0)[:-1], bright_ones.mean(0)[:-1])
    a, b = (model.summary_features(x).mean(0) for x in (bright_zeros, bright_ones))
    assert a.shape == (2 * 4 + 2,) and (a - b).abs().max() == 0.5  # half the rows per label
    hyper = HyperNetwork(model, in_features=10, config=HyperConfig(hidden=8))
    assert (hyper.code(bright_zeros) - hyper.code(bright_ones)).abs().max() > 1e-3

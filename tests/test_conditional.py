"""The conditional VAE, the per-point loss weights and selective fine-tuning's mask."""

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

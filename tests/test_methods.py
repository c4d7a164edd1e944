"""`fit_method`: which estimator each method name runs, with which lambda (docs/methods.md)."""

from __future__ import annotations

import pytest
import torch

from models.gmm import GMMGenerator
from models.ple import PLEConfig, fit_direct
from tasks.methods import fit_method
from tasks.params import HyperParams, PLEParams

HYPER, PLE = HyperParams(hidden=8), PLEParams(steps=3, lam=0.1, training="halves", batch_fraction=0.5)
X = torch.randn(2, 20, 1, generator=torch.Generator().manual_seed(0))


def _fit(method: str, **options) -> dict[str, torch.Tensor]:
    return fit_method(method, X, lambda: GMMGenerator(2, 1), HYPER, PLE, torch.Generator().manual_seed(1),
                      **options).estimate


def _equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[name], b[name]) for name in a)


def test_hyper_mle_is_ple_at_lambda_zero_whatever_lambda_is_given():
    assert _equal(_fit("hyper_mle", lam=50.0), _fit("ple", lam=0.0))
    assert not _equal(_fit("hyper_mle"), _fit("ple"))


def test_ple_takes_the_given_lambda_else_the_sections():
    assert _equal(_fit("ple"), _fit("ple", lam=PLE.lam))
    assert not _equal(_fit("ple", lam=50.0), _fit("ple"))


def test_mle_without_a_closed_form_trains_the_generator_directly():
    direct = fit_direct(lambda: GMMGenerator(2, 1), X, PLEConfig(**PLE.model_dump()), torch.Generator().manual_seed(1))
    assert _equal(_fit("mle"), direct.estimate)
    assert _fit("mle", closed_form=lambda x: {"mean": x.mean(dim=1)})["mean"].shape == (2, 1)


def test_an_unknown_method_is_refused_in_one_line():
    with pytest.raises(ValueError, match="^unknown method 'mle2'; use mle, hyper_mle or ple$"):
        _fit("mle2")

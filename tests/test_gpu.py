"""The GPU path: the GAN and the diffusion model train and sample on CUDA under bfloat16 autocast."""

from __future__ import annotations

import pytest
import torch

from models.diffusion import Diffusion, DiffusionConfig
from models.gan import GAN
from models.hypernet import HyperConfig
from models.ple import PLEConfig, fit_direct, fit_ensemble, sample_weights

GENERATORS = {"gan": lambda: GAN((8, 8)), "diffusion": lambda: Diffusion((8, 8), DiffusionConfig(timesteps=20))}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the GPU path is not exercised")
@pytest.mark.parametrize("kind", list(GENERATORS))
def test_generators_train_and_sample_on_cuda(kind):
    cuda, make = torch.device("cuda"), GENERATORS[kind]
    x = torch.rand(2, 32, 8, 8)
    for fitted in (fit_direct(make, x, PLEConfig(steps=5), torch.Generator().manual_seed(0), cuda),
                   fit_ensemble(make, x, HyperConfig(hidden=16), PLEConfig(steps=5, lam=1.0),
                                torch.Generator().manual_seed(0), cuda)):
        assert all(w.device.type == "cuda" and torch.isfinite(w).all() for w in fitted.estimate.values())
        assert all(map(torch.isfinite, map(torch.tensor, fitted.curve.fit)))
        images = sample_weights(make().to(cuda), fitted.estimate, 16, 1.0, torch.Generator().manual_seed(1))
        assert images.shape == (2, 16, 8, 8) and torch.isfinite(images).all()

"""The params section of the fairness study (`fairness:`) and of its downstream classifiers."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from models.vae import PRESETS as VAE_PRESETS
from tasks.params import HyperStudyParams, Strict, unique

ATTRIBUTE_DATASETS = ("digits", "mnist")  # grey images, whose inverted contrast is the protected attribute
FairnessMethod = Literal["mle", "hyper_mle", "ple", "upweight", "oversample"]


class DownstreamParams(Strict):
    """The downstream classifier of y retrained on every generation's data (`downstream.py`)."""

    modes: list[Literal["scratch", "finetune", "selective"]] = Field(
        default=["scratch", "finetune", "selective"], min_length=1, description="scratch: a new classifier; "
        "finetune: every parameter of the one pre-trained on real D_0; selective: its top_k % entries by gradient "
        "differences (AIM-Fair)")
    top_k: float = Field(default=50.0, gt=0.0, le=100.0,
                         description="percentage of parameter entries selective fine-tuning updates")
    features: int = Field(default=32, ge=2)
    epochs: int = Field(default=20, ge=1, description="epochs of scratch training and of the pre-training on D_0")
    finetune_epochs: int = Field(default=5, ge=1)
    batch_size: int = Field(default=64, ge=2)
    lr: float = Field(default=0.003, gt=0.0)
    finetune_lr: float = Field(default=0.001, gt=0.0)

    _unique = field_validator("modes")(unique)


class FairnessParams(HyperStudyParams):
    """The fairness study: a conditional VAE on images with a target y and a protected attribute s."""

    methods: list[FairnessMethod] | None = Field(
        default=None, min_length=1, description="mle, hyper_mle, ple and the baselines upweight and oversample")
    dataset: str = Field(default="digits", description="an image set with a protected attribute: digits or mnist")
    threshold: int = Field(default=5, ge=1, description="y = 1 for classes >= threshold (digits: 5 splits 0-4 "
                           "from 5-9)")
    attribute: Literal["invert"] = Field(default="invert", description="how s = 1 is rendered: invert = inverted "
                                         "contrast")
    bias: float = Field(default=0.9, gt=0.0, lt=1.0, description="P(s = y) in the real training data: 0.9 gives "
                        "group counts 9:1:1:9 for (y, s) = (0,0), (0,1), (1,0), (1,1)")
    n_samples: int = Field(ge=8, description="images per real draw D_0 and per generation")
    test_fraction: float = Field(default=0.3, gt=0.0, lt=1.0, description="held-out share of digits for the "
                                 "balanced test set")
    preset: str = Field(default="small", description="the conditional VAE's size, one of models/vae.py's PRESETS")
    eval_samples: int = Field(default=500, ge=10, description="generated rows per seed behind the estimator "
                              "response's statistic")
    downstream: DownstreamParams = Field(default_factory=DownstreamParams)

    _unique = field_validator("methods")(unique)

    @field_validator("dataset")
    @classmethod
    def _has_attribute(cls, value: str) -> str:
        if value not in ATTRIBUTE_DATASETS:
            raise ValueError(f"dataset {value!r} has no protected attribute here; use one of "
                             f"{', '.join(ATTRIBUTE_DATASETS)} (grey images, s = inverted contrast)")
        return value

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        if value not in VAE_PRESETS:
            raise ValueError(f"preset {value!r} is not one of the vae presets: {', '.join(VAE_PRESETS)}")
        return value

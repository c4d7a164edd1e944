"""The params section of an image study (`digits:`, `mnist:`, `cifar10:`) and of its reference classifier."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from models.diffusion import PRESETS as DIFFUSION_PRESETS
from models.gan import PRESETS as GAN_PRESETS
from models.gmmn import PRESETS as GMMN_PRESETS
from models.vae import PRESETS as VAE_PRESETS
from tasks.params import HyperStudyParams, Strict

GENERATOR_PRESETS = {"vae": list(VAE_PRESETS), "gmmn": list(GMMN_PRESETS), "gan": list(GAN_PRESETS),
                     "diffusion": list(DIFFUSION_PRESETS)}


class ClassifierParams(Strict):
    """The reference classifier (`models.classifier`): labels samples and gives the fid_classifier features."""

    features: int = Field(default=32, ge=2, description="width of the penultimate layer: the FID feature dimension")
    epochs: int = Field(default=30, ge=1)
    batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=0.003, gt=0.0)


class GANParams(Strict):
    """The adversarial game of `generator: gan` (models/gan.py)."""

    loss: Literal["hinge", "non_saturating"] = Field(default="hinge", description="the pair of losses of the "
                                                     "critic and the generator")


class DiffusionParams(Strict):
    """The diffusion process of `generator: diffusion` (models/diffusion.py)."""

    timesteps: int = Field(default=100, ge=2, le=10_000, description="T, the steps of the forward process")
    sampling_steps: int = Field(default=5, ge=1, description="DDIM steps of every sample (at most timesteps)")
    schedule: Literal["cosine", "linear"] = Field(default="cosine", description="the noise schedule")

    @model_validator(mode="after")
    def _steps_within_timesteps(self) -> DiffusionParams:
        if self.sampling_steps > self.timesteps:
            raise ValueError(f"sampling_steps ({self.sampling_steps}) must be at most timesteps ({self.timesteps})")
        return self


class ImageParams(HyperStudyParams):
    """An image study (PLE paper's MNIST VAE): a generator on an imbalanced subset of classes."""

    dataset: Literal["digits", "mnist", "cifar10"] = Field(
        description="digits ships with scikit-learn; mnist and cifar10 are read from data/raw/<dataset>")
    classes: list[int] = Field(min_length=1, description="the classes kept, e.g. [3, 6]")
    proportions: list[float] = Field(min_length=1, description="their shares in every real draw; sum 1")
    n_samples: int = Field(ge=4, description="images per real draw D_0 and per generation")
    test_fraction: float = Field(default=0.3, gt=0.0, lt=1.0, description="held-out share of every class (digits "
                                 "has no official test split; mnist and cifar10 use theirs)")
    generator: Literal["vae", "gmmn", "gan", "diffusion"] = Field(
        default="vae", description="vae (models/vae.py), gmmn (a DCGAN-style generator trained by MMD, "
        "models/gmmn.py), gan (adversarial, models/gan.py) or diffusion (DDPM sampled by DDIM, models/diffusion.py)")
    preset: str = Field(default="small", description="the generator's size, one of its module's PRESETS")
    eval_samples: int = Field(default=500, ge=10, description="generated images per seed for the metrics, the "
                              "same count every generation")
    fid_inception: bool = Field(default=False, description="also compute fid_inception (needs pytorch-fid's "
                                "weights file)")
    classifier: ClassifierParams = Field(default_factory=ClassifierParams)
    gan: GANParams = Field(default_factory=GANParams)
    diffusion: DiffusionParams = Field(default_factory=DiffusionParams)

    @model_validator(mode="after")
    def _classes_and_proportions(self) -> ImageParams:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("each class may appear only once in classes")
        if len(self.proportions) != len(self.classes):
            raise ValueError(f"proportions needs {len(self.classes)} entries, one per class in classes")
        if any(p <= 0 for p in self.proportions) or abs(sum(self.proportions) - 1) > 1e-6:
            raise ValueError("proportions must be positive and sum to 1")
        presets = GENERATOR_PRESETS[self.generator]
        if self.preset not in presets:
            raise ValueError(f"preset {self.preset!r} is not one of the {self.generator} presets: {', '.join(presets)}")
        return self

    @property
    def minority(self) -> int:
        """The class with the smallest proportion: the one whose share `minority_ratio` follows."""
        return self.classes[self.proportions.index(min(self.proportions))]

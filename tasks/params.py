"""The study's parameters: `params.yaml`, validated by pydantic before anything runs.

Every model is strict (a string is never read as a number) and forbids unknown keys, so a typo
stops the run instead of being ignored. `load_params` turns the first validation error into one
line that names the key, the bad value and what is allowed.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from models.gmmn import PRESETS as GMMN_PRESETS
from models.vae import PRESETS as VAE_PRESETS

GENERATOR_PRESETS = {"vae": list(VAE_PRESETS), "gmmn": list(GMMN_PRESETS)}
LoopMode = Literal["replace", "accumulate", "augment", "fresh"]
Method = Literal["mle", "hyper_mle", "ple"]
FairnessMethod = Literal["mle", "hyper_mle", "ple", "upweight", "oversample"]
ATTRIBUTE_DATASETS = ("digits", "mnist")  # grey images, whose inverted contrast is the protected attribute


class ParamsError(ValueError):
    """A params file that cannot be used; the message is one line meant for the user."""


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class LoopParams(_Strict):
    """How generation g's dataset D_g is built from the samples S_g of model g-1 (GUIDE section 1)."""

    mode: LoopMode = Field(description="replace: S_g; accumulate: D_(g-1) + S_g; "
                           "augment: D_0 subset + S_g; fresh: new real draw + S_g")
    real_fraction: float = Field(ge=0.0, le=1.0, description="real share of D_g in augment and fresh")
    sampling_bias: float = Field(gt=0.0, le=1.0, description="lambda: sample N(mu, lambda Sigma)")


def _unique_methods(methods: list[str] | None) -> list[str] | None:
    if methods is not None and len(set(methods)) != len(methods):
        raise ValueError("each method may appear only once")
    return methods


class GaussianParams(_Strict):
    """The analytic Gaussian study (PLE paper Fig. 5)."""

    methods: list[Literal["mle", "ple"]] | None = Field(
        default=None, min_length=1, description="overrides the top-level methods; no hypernetwork here")
    distribution: Literal["normal", "uniform"] = Field(description="true data: N(0,1) or U[0,1]")
    n_samples: int = Field(ge=2, description="size of every generation's dataset")
    generations: int = Field(ge=1, description="number of fitted generations, 0 .. generations-1")
    seeds: int = Field(ge=1, description="independent runs, vectorised in one tensor")

    _unique = field_validator("methods")(_unique_methods)


class HyperParams(_Strict):
    """The hypernetwork of `models.hypernet.HyperConfig`."""

    hidden: int = Field(ge=1)
    encoder_depth: int = Field(ge=1)
    post_depth: int = Field(ge=0)
    head: Literal["chunked", "linear"]
    chunk: int = Field(ge=1)
    embed: int = Field(ge=1)


class PLEParams(_Strict):
    """Training of the hypernetwork (`models.ple.PLEConfig`); `hyper_mle` uses lam = 0."""

    lam: float = Field(gt=0.0, description="penalty weight lambda of method ple")
    steps: int = Field(ge=1)
    lr: float = Field(gt=0.0)
    batch_fraction: float = Field(gt=0.0, le=1.0, description="share of the data in each step's random "
                                  "subset; below 1 the hypernetwork must map different batches to different weights")


class _HyperStudy(_Strict):
    """What every study with hypernetwork methods has: methods, generations, seeds, H and its training."""

    methods: list[Method] | None = Field(default=None, min_length=1)
    generations: int = Field(ge=1)
    seeds: int = Field(ge=1)
    hyper: HyperParams
    ple: PLEParams

    _unique = field_validator("methods")(_unique_methods)


class GMMGrid(_Strict):
    weight: list[float] = Field(min_length=1, description="weight of the first (majority) component")
    n_samples: list[int] = Field(min_length=1, description="points per generation")

    @field_validator("weight")
    @classmethod
    def _weights_in_unit_interval(cls, values: list[float]) -> list[float]:
        if not all(0.0 < v < 1.0 for v in values):
            raise ValueError("every weight must lie strictly between 0 and 1")
        return values

    @field_validator("n_samples")
    @classmethod
    def _enough_points(cls, values: list[int]) -> list[int]:
        if not all(v >= 4 for v in values):
            raise ValueError("every sample size must be at least 4")
        return values


class LambdaSweep(_Strict):
    """PLE at several penalty weights, at one point of the grid, beside MLE and hyper-MLE (lambda = 0)."""

    lams: list[float] = Field(min_length=1, description="penalty weights, each > 0")
    weight: float = Field(gt=0.0, lt=1.0)
    n_samples: int = Field(ge=4)

    @field_validator("lams")
    @classmethod
    def _positive(cls, values: list[float]) -> list[float]:
        if not all(v > 0 for v in values):
            raise ValueError("every lambda must be > 0 (lambda = 0 is hyper_mle, which the sweep runs anyway)")
        return values


class GMMParams(_HyperStudy):
    """The Gaussian-mixture study (PLE paper Fig. 3): a grid of imbalance x sample size."""

    means: list[list[float]] = Field(min_length=2, description="K component means, each of dimension d")
    stds: list[list[float]] = Field(min_length=2, description="K component standard deviations (K x d)")
    weights: list[float] = Field(min_length=1, description="relative weights of components 2..K "
                                 "(component 1 takes grid.weight, the rest share 1 - weight in these ratios)")
    grid: GMMGrid
    kl_samples: int = Field(ge=100, description="Monte Carlo draws for KL(p_true || q)")
    lambda_sweep: LambdaSweep

    @model_validator(mode="after")
    def _consistent_shapes(self) -> GMMParams:
        k, d = len(self.means), len(self.means[0])
        if any(len(m) != d for m in self.means) or len(self.stds) != k or any(len(s) != d for s in self.stds):
            raise ValueError(f"means and stds must both be {k} x {d} (components x dimensions)")
        if any(v <= 0 for row in self.stds for v in row):
            raise ValueError("every standard deviation must be positive")
        if len(self.weights) != k - 1 or any(v <= 0 for v in self.weights):
            raise ValueError(f"weights needs {k - 1} positive entries, one per component after the first")
        return self


class GridParams(_HyperStudy):
    """The distribution grid (PLE paper Fig. 4): each family's parameters by MLE and hypernetwork PLE."""

    distributions: list[Literal["normal", "uniform", "exponential", "laplace", "mixture"]] = Field(min_length=1)
    n_samples: int = Field(ge=4)

    @field_validator("distributions")
    @classmethod
    def _unique_distributions(cls, values: list[str]) -> list[str]:
        if len(set(values)) != len(values):
            raise ValueError("each distribution may appear only once")
        return values


class ClassifierParams(_Strict):
    """The reference classifier (`models.classifier`): labels samples and gives the fid_classifier features."""

    features: int = Field(ge=2, description="width of the penultimate layer: the FID feature dimension")
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0.0)


class ImageParams(_HyperStudy):
    """An image study (PLE paper's MNIST VAE): a generator on an imbalanced subset of classes."""

    dataset: Literal["digits", "mnist", "cifar10"] = Field(
        description="digits ships with scikit-learn; mnist and cifar10 are read from data/raw/<dataset>")
    classes: list[int] = Field(min_length=1, description="the classes kept, e.g. [3, 6]")
    proportions: list[float] = Field(min_length=1, description="their shares in every real draw; sum 1")
    n_samples: int = Field(ge=4, description="images per real draw D_0 and per generation")
    test_fraction: float = Field(gt=0.0, lt=1.0, description="held-out share of every class (digits has "
                                 "no official test split; mnist and cifar10 use theirs)")
    generator: Literal["vae", "gmmn"] = Field(description="vae (models/vae.py) or gmmn, a DCGAN-style "
                                              "generator trained by MMD (models/gmmn.py)")
    preset: str = Field(description="the generator's size, one of its module's PRESETS")
    eval_samples: int = Field(ge=10, description="generated images per seed for the metrics, the same "
                              "count every generation")
    fid_inception: bool = Field(description="also compute fid_inception (needs pytorch-fid's weights file)")
    classifier: ClassifierParams

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


class DownstreamParams(_Strict):
    """The downstream classifier of y retrained on every generation's data (tasks/downstream.py)."""

    modes: list[Literal["scratch", "finetune", "selective"]] = Field(
        min_length=1, description="scratch: a new classifier; finetune: every parameter of the one pre-trained "
        "on real D_0; selective: its top_k % entries by gradient differences (AIM-Fair)")
    top_k: float = Field(gt=0.0, le=100.0, description="percentage of parameter entries selective fine-tuning updates")
    features: int = Field(ge=2)
    epochs: int = Field(ge=1, description="epochs of scratch training and of the pre-training on D_0")
    finetune_epochs: int = Field(ge=1)
    batch_size: int = Field(ge=2)
    lr: float = Field(gt=0.0)
    finetune_lr: float = Field(gt=0.0)

    _unique = field_validator("modes")(_unique_methods)


class FairnessParams(_HyperStudy):
    """The fairness study: a conditional VAE on images with a target y and a protected attribute s."""

    methods: list[FairnessMethod] | None = Field(
        default=None, min_length=1, description="mle, hyper_mle, ple and the baselines upweight and oversample")
    dataset: str = Field(description="an image set with a protected attribute: digits or mnist")
    threshold: int = Field(ge=1, description="y = 1 for classes >= threshold (digits: 5 splits 0-4 from 5-9)")
    attribute: Literal["invert"] = Field(description="how s = 1 is rendered: invert = inverted contrast")
    bias: float = Field(gt=0.0, lt=1.0, description="P(s = y) in the real training data: 0.9 gives group "
                        "counts 9:1:1:9 for (y, s) = (0,0), (0,1), (1,0), (1,1)")
    n_samples: int = Field(ge=8, description="images per real draw D_0 and per generation")
    test_fraction: float = Field(gt=0.0, lt=1.0, description="held-out share of digits for the balanced test set")
    preset: str = Field(description="the conditional VAE's size, one of models/vae.py's PRESETS")
    downstream: DownstreamParams

    _unique = field_validator("methods")(_unique_methods)

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


class Params(_Strict):
    seed: int = Field(ge=0, description="global seed: same seed, same numbers")
    methods: list[Method] = Field(min_length=1, description="estimators compared in every study")
    loop: LoopParams
    gaussian: GaussianParams
    gmm: GMMParams
    grid: GridParams
    digits: ImageParams
    mnist: ImageParams | None = None
    cifar10: ImageParams | None = None
    fairness: FairnessParams

    _unique = field_validator("methods")(_unique_methods)

    @model_validator(mode="after")
    def _gaussian_is_analytic(self) -> Params:
        extra = set(self.methods_of("gaussian")) - {"mle", "ple"}
        if extra:
            raise ValueError(f"the analytic gaussian study has no {', '.join(sorted(extra))}; "
                             "set gaussian.methods, e.g. [mle, ple]")
        return self

    def methods_of(self, experiment: str) -> list[str]:
        """The experiment's own `methods` list when it has one, else the top-level list."""
        return getattr(self, experiment).methods or self.methods


def _key(loc: tuple) -> str:
    return ".".join(str(part) for part in loc if not isinstance(part, int)) or "(top level)"


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys allowed at the level of `loc` (whose last part is the unknown key)."""
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _describe(error: dict, source: str) -> str:
    key, kind, value = _key(error["loc"]), error["type"], error.get("input")
    if kind == "missing":
        return f"{source}: key '{key}' is missing; add it (see the params.yaml shipped with the project)"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(Params, error["loc"])
        close = difflib.get_close_matches(str(error["loc"][-1]), allowed, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"{source}: unknown key '{key}'; {hint}allowed here: {', '.join(allowed)}"
    message = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:
        return f"{source}: {message}"
    if isinstance(value, dict):
        return f"{source}: {key}: {message}"
    return f"{source}: {key} = {value!r} is invalid: {message}"


def load_params(path: str | Path) -> Params:
    """Read and validate a params file; raise ParamsError with a one-line message otherwise."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found; pass the path of an existing params file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}: not valid YAML{where}; fix the syntax") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of keys to values at the top level")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ParamsError(_describe(errors[0], str(path)) + more) from None


def flatten(params: BaseModel, prefix: str = "") -> dict[str, object]:
    """Dotted keys -> leaf values, e.g. {'loop.mode': 'replace', 'gaussian.n_samples': 100}."""
    flat: dict[str, object] = {}
    for name, value in params:
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            flat.update(flatten(value, prefix=f"{key}."))
        else:
            flat[key] = ",".join(map(str, value)) if isinstance(value, list) else value
    return flat

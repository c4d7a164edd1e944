"""Params shared by every study, and reading any params-like YAML file into a pydantic model.

Every model is strict (a string is never read as a number), refuses NaN and infinities, forbids
unknown keys (a typo stops the run instead of being ignored) and holds its defaults, so
`params.yaml` lists only what a user changes. A file is read as UTF-8 YAML whose mappings may not
repeat a key. Each study's own section lives in its module under `tasks/studies/`; the whole file's
model, `tasks.studies.Params`, joins them. `read_model` turns the first validation error into one
line that names the file, the key, the bad value and what is allowed.
"""

from __future__ import annotations

import difflib
from collections.abc import Hashable
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.errors import ParamsError

LoopMode = Literal["replace", "accumulate", "accumulate_subsample", "augment", "fresh"]
Method = Literal["mle", "hyper_mle", "ple"]
Model = TypeVar("Model", bound=BaseModel)


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)


def unique(values: list | None) -> list | None:
    """A validator: every entry of the list at most once."""
    if values is not None and len(set(values)) != len(values):
        raise ValueError("each value may appear only once")
    return values


class CurationParams(Strict):
    """`loop.curation`: how the synthetic samples S_g are verified before they enter D_g (docs/loop.md)."""

    kind: Literal["none", "verifier", "top_k"] = Field(
        default="none", description="none: S_g as sampled; verifier: keep the first n candidates scored >= "
        "threshold; top_k: keep the n best scored of ceil(n / keep) candidates")
    threshold: float = Field(default=0.5, ge=0.0, le=1.0, description="verifier: accept a candidate when its "
                             "score >= threshold")
    keep: float = Field(default=0.5, gt=0.0, le=1.0, description="top_k: the kept share n / ceil(n / keep) of "
                        "the candidates drawn")
    favour: str | None = Field(default=None, description="a biased verifier's favoured group (a class, a "
                               "mixture component numbered from 1, ...); None: unbiased")
    bias: float = Field(default=0.0, ge=0.0, le=1.0, description="probability that the biased verifier "
                        "rejects a candidate it reads as a group other than favour")
    max_rounds: int = Field(default=20, ge=1, description="verifier: rounds of n candidates per seed before "
                            "the run stops for too few accepted")

    @model_validator(mode="after")
    def _bias_needs_favour(self) -> CurationParams:
        if self.bias > 0 and self.favour is None:
            raise ValueError("bias > 0 needs favour, the group the verifier favours")
        return self


class LoopParams(Strict):
    """How generation g's dataset D_g is built from the samples S_g of model g-1 (docs/loop.md)."""

    mode: LoopMode = Field(default="replace", description="replace: S_g; accumulate: D_(g-1) + S_g; "
                           "accumulate_subsample: n points drawn from D_0 + S_1 + ... + S_g; "
                           "augment: D_0 subset + S_g; fresh: new real draw + S_g")
    real_fraction: float = Field(default=0.5, ge=0.0, le=1.0, description="real share of D_g in augment and fresh")
    real_points: int | None = Field(default=None, ge=0, description="real data as an amount: this many real points "
                                    "beside n synthetic ones in augment and fresh (replaces real_fraction)")
    sampling_bias: float = Field(default=1.0, gt=0.0, le=1.0, description="lambda: sample N(mu, lambda Sigma)")
    curation: CurationParams = Field(default_factory=CurationParams, description="how S_g is verified before "
                                     "it enters D_g")


class HyperParams(Strict):
    """The hypernetwork of `models.hypernet.HyperConfig` (docs/methods.md)."""

    hidden: int = Field(default=32, ge=1, description="width of the per-sample and post-pooling MLPs")
    encoder_depth: int = Field(default=2, ge=1, description="layers of the per-sample MLP")
    post_depth: int = Field(default=1, ge=0, description="layers of the MLP after mean pooling")
    head: Literal["lowrank", "linear"] = Field(default="lowrank", description="per tensor: factorised where cheaper "
                                               "(lowrank) or a full linear map (linear); docs/methods.md")
    rank: int = Field(default=8, ge=1, description="rank r of the factorised heads")


class PLEParams(Strict):
    """Training of the hypernetwork (`models.ple.PLEConfig`); `hyper_mle` uses lam = 0."""

    lam: float = Field(default=0.1, gt=0.0, description="penalty weight lambda of method ple")
    steps: int = Field(default=300, ge=1, description="Adam steps per fit (also of mle for neural generators)")
    lr: float = Field(default=0.01, gt=0.0, description="Adam's learning rate")
    batch_fraction: float = Field(default=0.5, gt=0.0, le=1.0, description="size of each step's dataset as a share "
                                  "of the data (mle: its random minibatch)")
    penalty: Literal["sum", "mean", "scaled"] = Field(default="sum", description="||H(Y) - H(X)||^2 summed over "
                                                      "entries, divided by their number, or per tensor / s_t^2")
    form: Literal["paper", "self_fit", "stop_gradient"] = Field(default="paper", description="the penalty's form "
                                                                "(docs/methods.md)")
    training: Literal["halves", "bootstrap", "reweighted"] = Field(
        default="reweighted", description="the datasets H trains on: random subsets, bootstrap draws, or bootstrap "
        "draws with Dirichlet-reweighted group shares")
    concentration: float = Field(default=1.0, gt=0.0, description="Dirichlet concentration of the group shares "
                                 "(reweighted); small: extreme shares")


class StudyParams(Strict):
    """What every study section has: its size and, optionally, its own list of methods."""

    methods: list[Method] | None = Field(default=None, min_length=1, description="overrides the top-level methods")
    generations: int = Field(ge=1, description="number of fitted generations, 0 .. generations-1")
    seeds: int = Field(ge=1, description="independent runs, vectorised in one tensor")

    _unique = field_validator("methods")(unique)


class HyperStudyParams(StudyParams):
    """A study with hypernetwork methods: H and its training."""

    hyper: HyperParams = Field(default_factory=HyperParams)
    ple: PLEParams = Field(default_factory=PLEParams)


class CommonParams(Strict):
    """The top of params.yaml: what every study shares."""

    seed: int = Field(default=0, ge=0, description="global seed: same seed, same numbers")
    max_generations: int = Field(default=1000, ge=1, description="ceiling on every study's generations, against "
                                 "a runaway run; raise it to run more")
    methods: list[Method] = Field(default=["mle", "hyper_mle", "ple"], min_length=1,
                                  description="estimators compared in every study")
    loop: LoopParams = Field(default_factory=LoopParams)

    _unique = field_validator("methods")(unique)

    def methods_of(self, section: str) -> list[str]:
        """The section's own `methods` list when it has one, else the top-level list."""
        return getattr(self, section).methods or self.methods


class _DuplicateKey(yaml.constructor.ConstructorError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping repeating a key (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # refused by SafeLoader itself
            if key in seen:
                raise _DuplicateKey(None, None, f"key {key!r} appears twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> dict:
    """The mapping in a UTF-8 YAML file; ParamsError (one line) when it is missing, unreadable, not
    text, not YAML, repeats a key or is not a mapping."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found; pass the path of an existing file") from None
    except IsADirectoryError:
        raise ParamsError(f"{path}: is a directory; pass the path of a params file") from None
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{path}: not UTF-8 text (byte {exc.start}: binary, or another encoding such as UTF-16 "
                          f"or Latin-1); save it as UTF-8") from None
    except OSError as exc:
        raise ParamsError(f"{path}: cannot be read ({exc.strerror}); check its permissions") from None
    except _DuplicateKey as exc:
        raise ParamsError(f"{path}: {exc.problem} in one mapping (line {exc.problem_mark.line + 1}); "
                          "keep one of them") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}: not valid YAML{where}; fix the syntax") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of keys to values at the top level")
    return raw


def overlay(base: dict, changes: dict) -> dict:
    """`base` with `changes` laid over it: mappings merged key by key, everything else replaced."""
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = overlay(merged[key], value) if isinstance(value, dict) and isinstance(
            merged.get(key), dict) else value
    return merged


def validate(model: type[Model], raw: dict, source: str, fix: str = "") -> Model:
    """`model` validated from `raw`; ParamsError naming `source`, the key and the bad value otherwise."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        errors = sorted(exc.errors(), key=lambda error: error["type"] != "extra_forbidden")  # typos first
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ParamsError(_describe(model, errors[0], source) + more + (f"; {fix}" if fix else "")) from None


def read_model(model: type[Model], *paths: str | Path, fix: str = "") -> Model:
    """`model` from one YAML file, or from several laid over each other in order."""
    raw: dict = {}
    for path in paths:
        raw = overlay(raw, read_yaml(path))
    return validate(model, raw, " + ".join(map(str, paths)), fix)


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


def _describe(model: type[BaseModel], error: dict, source: str) -> str:
    key, kind, value = _key(error["loc"]), error["type"], error.get("input")
    if kind == "missing":
        return f"{source}: key '{key}' is missing; add it (see the params.yaml shipped with the project)"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, error["loc"])
        close = difflib.get_close_matches(str(error["loc"][-1]), allowed, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"{source}: unknown key '{key}'; {hint}allowed here: {', '.join(allowed)}"
    message = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:
        return f"{source}: {message}"
    if isinstance(value, dict):
        return f"{source}: {key}: {message}"
    return f"{source}: {key} = {value!r} is invalid: {message}"


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

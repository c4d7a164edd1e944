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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

LoopMode = Literal["replace", "accumulate", "augment", "fresh"]
Method = Literal["mle", "ple"]


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


class GaussianParams(_Strict):
    """The analytic Gaussian study (PLE paper Fig. 5)."""

    distribution: Literal["normal", "uniform"] = Field(description="true data: N(0,1) or U[0,1]")
    n_samples: int = Field(ge=2, description="size of every generation's dataset")
    generations: int = Field(ge=1, description="number of fitted generations, 0 .. generations-1")
    seeds: int = Field(ge=1, description="independent runs, vectorised in one tensor")


class Params(_Strict):
    seed: int = Field(ge=0, description="global seed: same seed, same numbers")
    methods: list[Method] = Field(min_length=1, description="estimators compared in every study")
    loop: LoopParams
    gaussian: GaussianParams

    @field_validator("methods")
    @classmethod
    def _unique(cls, methods: list[str]) -> list[str]:
        if len(set(methods)) != len(methods):
            raise ValueError("each method may appear only once")
        return methods


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

"""A sweep: one study run at every point of a grid of params overrides, declared in a YAML file.

    # sweeps/seeds_bias.yaml
    study: gaussian              # gaussian | gmm | gmm_lambda | grid | fairness (a flow of flows/)
    params: params.yaml          # the base params, relative to the sweep's root
    grid:                        # every combination of the listed axes is one point
      seed: [0, 1]               # the global seed
      sampling_bias: [1.0, 0.8]  # loop.sampling_bias
      mode: [replace]            # loop.mode
      method: [mle, ple]         # one method per point (<section>.methods: [method])
      lam: [0.1, 1.0]            # <section>.ple.lam, for studies with a hypernetwork

Point `seed=0,sampling_bias=0.8` gets the folder `sweeps/seeds_bias/seed=0,sampling_bias=0.8/`
holding its params file and, as the study's root, its data, metrics and figures: no two points
write the same path, and each point resumes like the study does.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tasks import storage
from tasks.params import LoopMode, Method, Params, ParamsError, load_params

# study -> params section
SECTIONS = {"gaussian": "gaussian", "gmm": "gmm", "gmm_lambda": "gmm", "grid": "grid", "fairness": "fairness"}


class SweepError(ParamsError):
    """A sweep file that cannot be used; the message is one line meant for the user."""


class Grid(BaseModel):
    """The axes of a sweep; each lists the values to try, in order."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    seed: list[int] | None = Field(default=None, min_length=1, description="the global seed")
    method: list[Method] | None = Field(default=None, min_length=1, description="one method per point")
    lam: list[float] | None = Field(default=None, min_length=1, description="ple.lam of the study's section")
    mode: list[LoopMode] | None = Field(default=None, min_length=1, description="loop.mode")
    sampling_bias: list[float] | None = Field(default=None, min_length=1, description="loop.sampling_bias")

    @field_validator("*")
    @classmethod
    def _unique(cls, values: list | None) -> list | None:
        if values is not None and len(set(values)) != len(values):
            raise ValueError("each value may appear only once (two points would share a folder)")
        return values


class SweepFile(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    study: Literal["gaussian", "gmm", "gmm_lambda", "grid", "fairness"]
    params: str = Field(default="params.yaml", min_length=1, description="base params file, relative to the root")
    grid: Grid


@dataclass(frozen=True)
class Point:
    """One point of a sweep: its coordinates, folder name and complete params."""

    coordinates: dict[str, object]
    slug: str
    params: dict


@dataclass(frozen=True)
class Sweep:
    name: str
    study: str
    axes: dict[str, list]
    points: list[Point]

    def folder(self, root: Path) -> Path:
        """sweeps/<name>: one subfolder per point."""
        return root / "sweeps" / self.name


def _override(params: dict, section: str, axis: str, value: object) -> None:
    """Set the params key(s) an axis stands for."""
    if axis == "seed":
        params["seed"] = value
    elif axis in ("mode", "sampling_bias"):
        params["loop"][axis] = value
    elif axis == "method":
        params[section]["methods"] = [value]
    else:  # lam
        params[section]["ple"]["lam"] = value


def _one_line(error: dict, source: str, fix: str) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "(top level)"
    value = f" = {error['input']!r}" if error["type"] not in ("missing", "extra_forbidden") else ""
    return f"{source}: {where}{value}: {error['msg'].removeprefix('Value error, ')}; {fix}"


def load_sweep(path: str | Path, root: str | Path = ".") -> Sweep:
    """Read and validate a sweep file and every point's params; SweepError (one line) otherwise."""
    path, root = Path(path), Path(root)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SweepError(f"{path}: file not found; pass the path of a sweep file (sweeps/<name>.yaml)") from None
    except yaml.YAMLError:
        raise SweepError(f"{path}: not valid YAML; fix the syntax") from None
    try:
        spec = SweepFile.model_validate(raw)
    except ValidationError as exc:
        raise SweepError(_one_line(exc.errors()[0], str(path), "keys: study, params, grid; grid axes: "
                                   "seed, method, lam, mode, sampling_bias (example: tasks/sweep.py)")) from None
    axes = {axis: values for axis, values in spec.grid if values is not None}
    if not axes:
        raise SweepError(f"{path}: grid has no axis; list values under seed, method, lam, mode or sampling_bias")
    section = SECTIONS[spec.study]
    try:
        load_params(root / spec.params)
    except ParamsError as exc:
        raise SweepError(f"{path}: params: {exc}") from None
    base = yaml.safe_load((root / spec.params).read_text())
    if "lam" in axes and "ple" not in base[section]:
        raise SweepError(f"{path}: grid.lam: the {spec.study} study has no ple.lam; remove the lam axis")
    points = []
    for values in itertools.product(*axes.values()):
        coordinates = dict(zip(axes, values))
        params = yaml.safe_load(yaml.safe_dump(base))  # a deep copy of plain data
        for axis, value in coordinates.items():
            _override(params, section, axis, value)
        slug = ",".join(f"{axis}={value}" for axis, value in coordinates.items())
        try:
            Params.model_validate(params)
        except ValidationError as exc:
            raise SweepError(_one_line(exc.errors()[0], f"{path}: point {slug}", "change that axis's values")) from None
        points.append(Point(coordinates, slug, params))
    return Sweep(path.stem, spec.study, axes, points)


def write_point_params(folder: Path, point: Point) -> Path:
    """<folder>/params.yaml: the base params with the point's overrides, written atomically."""
    path = folder / "params.yaml"
    storage.write_text(path, yaml.safe_dump(point.params, sort_keys=False))
    return path

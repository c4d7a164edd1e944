"""A sweep: one study run at every point of a grid of params overrides, declared in a YAML file.

    # sweeps/seeds_bias.yaml
    study: gaussian              # a study of tasks/studies/ (python -m tasks.studies --all)
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
import json
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import Field, field_validator

from tasks.errors import ParamsError
from tasks.infra import storage
from tasks.loop import GridPoint
from tasks.params import LoopMode, Method, Strict, read_yaml, unique, validate
from tasks.studies import STUDIES, Params, load_params, spec

AXES = "seed, method, lam, mode, sampling_bias"


class Grid(Strict):
    """The axes of a sweep; each lists the values to try, in order (each value once: two points would
    share a folder)."""

    seed: list[int] | None = Field(default=None, min_length=1, description="the global seed")
    method: list[Method] | None = Field(default=None, min_length=1, description="one method per point")
    lam: list[float] | None = Field(default=None, min_length=1, description="ple.lam of the study's section")
    mode: list[LoopMode] | None = Field(default=None, min_length=1, description="loop.mode")
    sampling_bias: list[float] | None = Field(default=None, min_length=1, description="loop.sampling_bias")

    _unique = field_validator("*")(unique)


class SweepFile(Strict):
    study: str = Field(description="a study of the registry that a sweep can run")
    params: str = Field(default="params.yaml", min_length=1, description="base params file, relative to the root")
    grid: Grid

    @field_validator("study")
    @classmethod
    def _sweepable(cls, value: str) -> str:
        names = [s.name for s in STUDIES if s.sweepable]
        if value not in names:
            raise ValueError(f"choose one of {', '.join(names)}")
        return value


@dataclass(frozen=True)
class Point:
    """One point of a sweep: its coordinates (whose name is its folder) and its complete params."""

    grid: GridPoint
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
        params.setdefault("loop", {})[axis] = value
    elif axis == "method":
        params[section]["methods"] = [value]
    else:  # lam
        params[section].setdefault("ple", {})["lam"] = value


def load_sweep(path: str | Path, root: str | Path = ".") -> Sweep:
    """Read and validate a sweep file and every point's params; ParamsError (one line) otherwise."""
    path, root = Path(path), Path(root)
    sweep = validate(SweepFile, read_yaml(path), str(path), f"grid axes: {AXES} (example: tasks/infra/sweep.py)")
    axes = {axis: values for axis, values in sweep.grid if values is not None}
    if not axes:
        raise ParamsError(f"{path}: grid has no axis; list values under {AXES}")
    study = spec(sweep.study)
    try:
        load_params(root / sweep.params)
    except ParamsError as exc:
        raise ParamsError(f"{path}: params: {exc}") from None
    if "lam" in axes and "ple" not in study.params.model_fields:
        raise ParamsError(f"{path}: grid.lam: the {sweep.study} study has no ple.lam; remove the lam axis")
    fixed = [axis for axis in axes if axis in study.own_axes]
    if fixed:
        axis = fixed[0]
        raise ParamsError(f"{path}: grid.{axis}: the {sweep.study} study sets its {axis} values itself (params "
                          f"section {study.section}); remove the {axis} axis")
    base = read_yaml(root / sweep.params)
    points = []
    for values in itertools.product(*axes.values()):
        point = GridPoint(dict(zip(axes, values)))
        params = json.loads(json.dumps(base))  # a deep copy of plain data
        for axis, value in point.coordinates.items():
            _override(params, study.section, axis, value)
        validate(Params, params, f"{path}: point {point.name}", "change that axis's values")
        points.append(Point(point, params))
    return Sweep(path.stem, sweep.study, axes, points)


def write_point_params(folder: Path, point: Point) -> Path:
    """<folder>/params.yaml: the base params with the point's overrides, written atomically."""
    path = folder / "params.yaml"
    storage.write_text(path, yaml.safe_dump(point.params, sort_keys=False))
    return path

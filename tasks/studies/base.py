"""What every study shares: its registry entry (`StudySpec`) and the base class of its `Study`.

A study is a module (or package) of `tasks/studies/` that defines
- its params section, a `tasks.params.StudyParams` subclass with defaults for what users rarely change;
- its `tasks.loop.Study`: how to draw real data, fit by each method, sample and evaluate;
- `build(params, root)`: the study's `Study` objects, one per grid point, every input checked;
- `figures(studies, params, tidy, curves, paths)`: its figures, drawn from the tables;
- a `StudySpec` that names all of these, listed in `tasks.studies.STUDIES`.
The flow `flows.study` then gives it every loop mode, storage, resuming, tables, tracking and a
DVC stage (docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import psutil

from models.ple import Fitted
from tasks.curation import Verifiable
from tasks.errors import ParamsError
from tasks.infra.paths import StudyPaths
from tasks.loop import GridPoint, Study, split_counts
from tasks.params import LoopParams, Method, StudyParams

Build = Callable[[Any, Path], list[Study]]  # (Params, repository root) -> one Study per grid point
Figures = Callable[[list[Study], Any, pd.DataFrame, pd.DataFrame, StudyPaths], list[Path]]


@dataclass(frozen=True)
class StudySpec:
    """A study as the pipeline knows it: one DVC stage, one MLflow experiment, one folder per output kind."""

    name: str  # the DVC stage, MLflow experiment and output folders
    section: str  # its section of params.yaml (several studies may share one)
    params: type[StudyParams]  # the section's model
    build: Build
    figures: Figures
    report_metrics: tuple[str, ...]  # what `flows.report` shows (shell-style patterns)
    methods: tuple[str, ...] = ("mle", "hyper_mle", "ple")  # the methods it can run
    required: bool = True  # False: the section may be left out of params.yaml (the study is then unavailable)
    raw_data: str | None = None  # a folder under data/raw it needs: in `make run` only when that holds files
    classifier: str | None = None  # the study whose reference classifier it reads (stage classifier_<classifier>)
    sweepable: bool = True  # `flows.sweep` can run it at points of a grid
    own_axes: tuple[str, ...] = ()  # sweep axes it sets itself from its section (a sweep may not override them)
    light: bool = False  # its generations compute in microseconds: in its own process, without worker processes

    @property
    def owns_classifier(self) -> bool:
        """Its reference classifier is its own: the registry trains it (stage classifier_<name>)."""
        return self.classifier == self.name

    def default(self, root: Path = Path(".")) -> bool:
        """Whether `make run` runs it: always, or when its raw data is in place."""
        return self.raw_data is None or any((root / "data" / "raw" / self.raw_data).glob("*"))

    def studies(self, params: Any, root: Path) -> list[Study]:
        """`build`, refused (ParamsError) when the loop settings do not fit the study (`check_loop`) or when a
        point's datasets alone would not fit in the memory available."""
        studies = self.build(params, root)
        loop = params.loop
        self.check_loop(studies, loop)
        largest = max(studies, key=lambda study: dataset_bytes(study, loop))
        need, available = dataset_bytes(largest, loop), psutil.virtual_memory().available
        if need > available:
            raise ParamsError(
                f"{self.section}: {largest.seeds} seeds x {largest.n_samples} points x {largest.event_size} values "
                f"need about {need / 1e9:.3g} GB for the datasets alone ({loop.mode} mode), more than the "
                f"{available / 1e9:.3g} GB of memory available; lower {self.section}.seeds or n_samples")
        return studies

    def check_loop(self, studies: list[Study], loop: LoopParams) -> None:
        """ParamsError when augment's real points outnumber D_0, or curation asks for a verifier the study
        lacks or for a group its verifier does not read."""
        smallest = min(study.n_samples for study in studies)
        if loop.mode == "augment" and loop.real_points is not None and loop.real_points > smallest:
            raise ParamsError(f"loop.real_points = {loop.real_points} is more than the {smallest} points of D_0 that "
                              f"augment draws its real points from ({self.section}.n_samples); lower it, or use "
                              "loop.mode = fresh for new real draws")
        curation = loop.curation
        if curation.kind == "none":
            return
        if not isinstance(studies[0], Verifiable):
            raise ParamsError(f"loop.curation.kind = {curation.kind}: the {self.name} study has no verifier; set "
                              "loop.curation.kind = none for it")
        groups = studies[0].verifier_groups
        if curation.favour is not None and curation.favour not in groups:
            raise ParamsError(f"loop.curation.favour = {curation.favour!r} is not a group of the {self.name} study's "
                              f"verifier; choose one of {', '.join(groups)}")


def dataset_bytes(study: Study, loop: LoopParams) -> int:
    """A lower bound of the loop's memory: four float32 datasets at once (D_0, D_g, S_(g+1), D_(g+1)) of
    seeds x points x event-size values; points = the size of D_g (n, or real_points + n), times the
    generations when the stored datasets accumulate."""
    if loop.mode in ("accumulate", "accumulate_subsample"):
        points = study.n_samples * study.generations
    else:
        points = max(study.n_samples, sum(split_counts(loop.mode, study.n_samples, loop.real_fraction,
                                                       loop.real_points)))
    return 4 * 4 * study.seeds * points * study.event_size


class StudyBase:
    """Defaults of a `tasks.loop.Study`: `seeds`, `generations` and `n_samples` read from the study's
    params section `self.params`, scalar data points, no grid, no extra columns, the methods of the params, and the
    training curves of a `Fitted`. A subclass overrides what it has (e.g. `point` as a field)."""

    params: StudyParams
    point = GridPoint()
    labels: dict[str, object] = {}
    methods: tuple[Method, ...] | None = None

    @property
    def n_samples(self) -> int:
        return self.params.n_samples

    @property
    def seeds(self) -> int:
        return self.params.seeds

    @property
    def generations(self) -> int:
        return self.params.generations

    @property
    def event_size(self) -> int:
        """Values per data point (one for a scalar)."""
        return 1

    def training_curves(self, model: Any) -> dict[str, list[float]]:
        """The fit and penalty (and a two-player generator's adversary loss) per optimiser step of a model
        trained by gradient descent; {} otherwise."""
        if isinstance(model, Fitted) and model.curve.fit:
            curves = {"fit": model.curve.fit, "penalty": model.curve.penalty, "adversary": model.curve.adversary}
            return {name: values for name, values in curves.items() if values}
        return {}

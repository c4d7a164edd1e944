"""The registry of studies: the one list that the pipeline, the Makefile, serve, reports, sweeps,
params validation and the tests read.

Adding a study = a module under tasks/studies/ with a `StudySpec`, one line in `STUDIES`, and a
stage in dvc.yaml (docs/extending.md).

    python -m tasks.studies list [--all]      the studies `make run` runs (--all: every study)
    python -m tasks.studies schema            every params key with its type and default (docs/params.md)
    python -m tasks.studies overlay params.yaml params.paper.yaml --out params.yaml
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import get_args

import yaml
from pydantic import BaseModel, create_model, model_validator

from tasks.errors import ParamsError, report
from tasks.infra import storage
from tasks.params import CommonParams, overlay as overlay_mappings, read_model, read_yaml
from tasks.studies import fairness, gaussian, gmm, grid, images, language
from tasks.studies.base import StudySpec

STUDIES: tuple[StudySpec, ...] = (
    gaussian.STUDY,
    gmm.GMM,
    gmm.GMM_LAMBDA,
    grid.STUDY,
    images.DIGITS,
    images.DIGITS_GAN,
    images.DIGITS_DIFFUSION,
    fairness.STUDY,
    language.LANGUAGE,
    language.LANGUAGE_TEXT,
    images.MNIST,
    images.MNIST_GAN,
    images.MNIST_DIFFUSION,
    images.CIFAR10,
    images.CIFAR10_GAN,
    images.CIFAR10_DIFFUSION,
)
BY_NAME = {spec.name: spec for spec in STUDIES}


def spec(name: str) -> StudySpec:
    """The study named `name`; ParamsError listing the known ones otherwise."""
    if name not in BY_NAME:
        raise ParamsError(f"unknown study {name!r}; choose one of {', '.join(BY_NAME)}")
    return BY_NAME[name]


class _Sections(CommonParams):
    @model_validator(mode="after")
    def _generations_below_ceiling(self):
        """No study runs more generations than `max_generations`."""
        for study in STUDIES:
            section = getattr(self, study.section)
            if section is not None and section.generations > self.max_generations:
                raise ValueError(f"{study.section}.generations = {section.generations} is above max_generations = "
                                 f"{self.max_generations}, the ceiling against runaway runs; lower it, or raise "
                                 "max_generations")
        return self

    @model_validator(mode="after")
    def _methods_each_study_has(self):
        """Every study's methods (its own list, else the top-level one) are methods it can run."""
        for study in STUDIES:
            section = getattr(self, study.section)
            extra = section is not None and set(self.methods_of(study.section)) - set(study.methods)
            if extra:
                raise ValueError(f"the {study.name} study has no {', '.join(sorted(extra))}; set "
                                 f"{study.section}.methods, e.g. [{', '.join(study.methods)}]")
        return self


# params.yaml: the common keys and one section per study (a section shared by several studies once)
Params = create_model("Params", __base__=_Sections, **{
    s.section: (s.params, ...) if s.required else (s.params | None, None) for s in STUDIES})


def load_params(path: str | Path, overlay: str | Path | None = None) -> Params:
    """Read and validate a params file, with `overlay` laid over it when given (params.paper.yaml holds
    only what differs from params.yaml); ParamsError with a one-line message otherwise."""
    return read_model(Params, path, *([overlay] if overlay else []))


def write_overlaid(base: Path, overlay: Path, out: Path) -> None:
    """`base` with `overlay` laid over it, validated, written to `out` (atomically; comments are not kept)."""
    load_params(base, overlay)
    storage.write_text(out, yaml.safe_dump(overlay_mappings(read_yaml(base), read_yaml(overlay)), sort_keys=False))


def schema_tables(model: type[BaseModel] = Params, prefix: str = "", seen: dict | None = None) -> list[str]:
    """Markdown tables of every key of params.yaml: its type, default ("required" when it has none) and
    meaning; a section of a model already shown refers to it."""
    seen = {} if seen is None else seen
    rows, nested = [], []
    for name, field in model.model_fields.items():
        key, annotation = f"{prefix}{name}", field.annotation
        inner = next((a for a in (annotation, *get_args(annotation)) if isinstance(a, type) and issubclass(a, BaseModel)),
                     None)
        if inner is not None and inner in seen:
            nested += [f"### {key}", "", f"The keys of `{seen[inner]}`.", ""]
        elif inner is not None:
            seen[inner] = key
            nested += schema_tables(inner, f"{key}.", seen)
        else:
            default = "required" if field.is_required() else f"`{field.get_default(call_default_factory=True)}`"
            kind = str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")
            cells = [f"`{key}`", kind, default, field.description or ""]
            rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    head = [f"### {prefix.rstrip('.') or '(top level)'}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
    return ([*head, *rows, ""] if rows else []) + nested


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The registry of studies, and params files laid over each other.")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="the studies `make run` runs (their raw data, if any, in place)")
    listing.add_argument("--all", action="store_true", help="every study, also those whose raw data is missing")
    commands.add_parser("schema", help="print the tables of every params key (docs/params.md)")
    merge = commands.add_parser("overlay", help="write BASE with OVERLAY laid over it to --out, for `dvc repro`")
    merge.add_argument("base", type=Path)
    merge.add_argument("overlay", type=Path)
    merge.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "list":
        print(" ".join(s.name for s in STUDIES if args.all or s.default()))
        return 0
    if args.command == "schema":
        print("\n".join(schema_tables()), end="")
        return 0
    return report(lambda: write_overlaid(args.base, args.overlay, args.out))

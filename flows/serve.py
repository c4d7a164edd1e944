"""Serve the study flows as Prefect deployments with cron schedules, from a declarative file.

    python -m flows.serve [flows/deployments.yaml]      (what `make serve` runs, against its server)

Each entry names a flow module of `flows/`, a deployment name, a cron schedule and default
parameters; a run started from the UI may override them. This process executes the runs, each in
a subprocess started in the current folder (the repository root), until it is stopped.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import yaml
from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from pydantic import BaseModel, ConfigDict, Field, ValidationError

FLOWS = {"gaussian": "gaussian_flow", "gmm": "gmm_flow", "gmm_lambda": "gmm_lambda_flow", "grid": "grid_flow",
         "images": "images_flow", "classifier": "classifier_flow",
         "sweep": "sweep_flow"}  # module of flows/ -> its flow


class Deployment(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1)
    flow: str = Field(pattern="^(" + "|".join(FLOWS) + ")$")
    cron: str = Field(min_length=9, description="five cron fields, e.g. '0 2 * * *'")
    parameters: dict[str, object] = {}


class DeploymentsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    deployments: list[Deployment] = Field(min_length=1)


def load(path: Path) -> list[Deployment]:
    """The validated entries of a deployments file; ValueError with one line otherwise."""
    try:
        return DeploymentsFile.model_validate(yaml.safe_load(path.read_text())).deployments
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read it ({exc})") from None
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise ValueError(f"{path}: {where}: {error['msg']} (flows: {', '.join(FLOWS)})") from None


def runner_deployments(entries: list[Deployment]) -> list[RunnerDeployment]:
    """One Prefect deployment per entry, its flow imported from flows.<module>."""
    deployments = []
    for entry in entries:
        flow = getattr(importlib.import_module(f"flows.{entry.flow}"), FLOWS[entry.flow])
        deployments.append(flow.to_deployment(name=entry.name, cron=entry.cron, parameters=entry.parameters,
                                              tags=[entry.flow]))
    return deployments


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    path = Path(args[0] if args else "flows/deployments.yaml")
    try:
        deployments = runner_deployments(load(path))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    serve(*deployments)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Serve the study flows as Prefect deployments with cron schedules, from a declarative file.

    python -m flows.serve [flows/deployments.yaml]      (what `make serve` runs, against its server)

Each entry names a flow (`study`, `classifier` or `sweep`), a deployment name, a cron schedule and
default parameters (a study flow's `study` is a name of the registry, `tasks.studies`); a run
started from the UI may override them. This process executes the runs, each in
a subprocess started in the current folder (the repository root), until it is stopped.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from pydantic import Field, model_validator

from flows.classifier import classifier_flow
from flows.study import study_flow
from flows.sweep import sweep_flow
from tasks.errors import ParamsError, report
from tasks.params import Strict, read_model
from tasks.studies import spec

FLOWS = {"study": study_flow, "classifier": classifier_flow, "sweep": sweep_flow}


class Deployment(Strict):
    name: str = Field(min_length=1)
    flow: Literal["study", "classifier", "sweep"]
    cron: str = Field(min_length=9, description="five cron fields, e.g. '0 2 * * *'")
    parameters: dict[str, object] = {}

    @model_validator(mode="after")
    def _known_study(self) -> Deployment:
        if self.flow != "sweep":
            try:
                spec(str(self.parameters.get("study")))
            except ParamsError as exc:
                raise ValueError(f"parameters.study: {exc}") from None
        return self


class DeploymentsFile(Strict):
    deployments: list[Deployment] = Field(min_length=1)


def load(path: Path) -> list[Deployment]:
    """The validated entries of a deployments file; ParamsError with one line otherwise."""
    return read_model(DeploymentsFile, path, fix=f"flows: {', '.join(FLOWS)}").deployments


def runner_deployments(entries: list[Deployment]) -> list[RunnerDeployment]:
    """One Prefect deployment per entry, tagged with its flow and study."""
    return [FLOWS[entry.flow].to_deployment(name=entry.name, cron=entry.cron, parameters=entry.parameters,
                                            tags=[entry.flow, str(entry.parameters.get("study", entry.flow))])
            for entry in entries]


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    path = Path(args[0] if args else "flows/deployments.yaml")
    return report(lambda: serve(*runner_deployments(load(path))))


if __name__ == "__main__":
    sys.exit(main())

"""Serve the study flows as Prefect deployments with cron schedules, from a declarative file.

    python -m flows.serve [flows/deployments.yaml]      (what `make serve` runs, against its server)
    python -m flows.serve [flows/deployments.yaml] --pool NAME     (what `make lab` runs)

Each entry names a flow (`study`, `classifier` or `sweep`), a deployment name, a cron schedule and
default parameters (a study flow's `study` is a name of the registry, `tasks.studies`); a run
started from the UI may override them. This process executes the runs, each in
a subprocess started in the current folder (the repository root), until it is stopped. With
--pool, it registers the deployments on that work pool of PREFECT_API_URL instead and exits: the
pool's workers execute the runs, in the repository's folder.
"""

from __future__ import annotations

import argparse
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
from tasks.infra.lab import check_pool, from_repository
from tasks.infra.servers import check_servers
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


def runner_deployments(entries: list[Deployment], pooled: bool = False) -> list[RunnerDeployment]:
    """One Prefect deployment per entry, tagged with its flow and study; `pooled`: its flow loaded from the
    repository's folder, for a work pool's workers."""
    return [(from_repository(FLOWS[entry.flow]) if pooled else FLOWS[entry.flow]).to_deployment(
        name=entry.name, cron=entry.cron, parameters=entry.parameters,
        tags=[entry.flow, str(entry.parameters.get("study", entry.flow))]) for entry in entries]


def deploy_on(pool: str, entries: list[Deployment]) -> None:
    """Register the deployments on the work pool `pool` (InputUnavailableError if PREFECT_API_URL lacks it)."""
    check_servers()
    check_pool(pool)
    for deployment in runner_deployments(entries, pooled=True):
        deployment.apply(work_pool_name=pool)
    print(f"{len(entries)} deployments on work pool {pool}: {', '.join(entry.name for entry in entries)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("deployments", nargs="?", type=Path, default=Path("flows/deployments.yaml"))
    parser.add_argument("--pool", help="register the deployments on this work pool instead of serving them")
    args = parser.parse_args(argv)
    return report(lambda: deploy_on(args.pool, load(args.deployments)) if args.pool else
                  serve(*runner_deployments(load(args.deployments))))


if __name__ == "__main__":
    sys.exit(main())

"""Run one study of the registry (`tasks.studies.STUDIES`) through the self-consuming loop.

    python -m flows.study gaussian                                 (what `dvc repro gaussian` runs)
    python -m flows.study gmm params.yaml --overlay params.paper.yaml   (the paper's settings over params.yaml)

The study's `build` checks every input first (params, data files, the reference classifier), so
a problem there stops with one line before the flow starts.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import flow

from flows.cli import exit_process, main
from flows.self_consuming import run_study
from tasks.infra.lock import check_unlocked
from tasks.studies import STUDIES, load_params, spec


def preflight(study: str, params_file: str, overlay: str | None = None, root: str = ".") -> None:
    """Build the study once: every input it needs is there and fits the params, and no other run holds it."""
    studies = spec(study).studies(load_params(params_file, overlay), Path(root))
    check_unlocked(Path(root), studies[0].experiment)


@flow(name="study", flow_run_name="{study}", log_prints=True)
def study_flow(study: str, params_file: str = "params.yaml", root: str = ".", overlay: str | None = None) -> pd.DataFrame:
    """Fit every method generation after generation at every grid point of `study`; return the tidy metrics.

    `overlay`: a params file laid over `params_file`, holding only what differs (params.paper.yaml)."""
    entry, params = spec(study), load_params(params_file, overlay)
    studies = entry.studies(params, Path(root))
    return run_study(studies, params, Path(root), entry.figures, entry.section, entry.light)


if __name__ == "__main__":
    exit_process(main(study_flow, [s.name for s in STUDIES], preflight=preflight))

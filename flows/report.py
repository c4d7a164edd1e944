"""Write a study's report from MLflow: `<out>/<study>/comparison.png` and `<out>/<study>/table.md`.

    python -m flows.report gaussian [--out reports]      (`make report`: every default study)

Reads the study's latest finished execution from MLFLOW_TRACKING_URI, else from the repository's
`.mlflow` store. Not a Prefect flow: it only reads MLflow, so it starts no Prefect server. An
unknown study, an unreachable server or a study without runs stops with one line on stderr, exit
code 2, and nothing written.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tasks.errors import ReportError, UserError
from tasks.infra.paths import StudyPaths
from tasks.infra.servers import check_mlflow_server
from tasks.infra.tracking import Store
from tasks.outputs.reports import write_report
from tasks.studies import BY_NAME, spec


def client(root: Path) -> MlflowClient:
    """A client of MLFLOW_TRACKING_URI (checked to answer), else of the local store (checked to exist)."""
    mlflow_dir = StudyPaths(root, "").mlflow_dir
    if "MLFLOW_TRACKING_URI" in os.environ:
        check_mlflow_server()
    elif not (mlflow_dir / "mlflow.db").exists():
        raise ReportError(f"no MLflow store at {mlflow_dir / 'mlflow.db'}; run a study first or set MLFLOW_TRACKING_URI")
    return MlflowClient(Store.of(mlflow_dir).uri)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help=f"one of {', '.join(BY_NAME)}")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="output folder (default: reports)")
    args = parser.parse_args(argv)
    try:
        spec(args.study)  # an unknown study is named before any connection
        written = write_report(client(Path(".")), args.study, args.out)
    except (UserError, MlflowException) as exc:
        print(f"error: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    print("\n".join(map(str, written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

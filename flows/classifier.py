"""The reference classifier of an image study, trained once on the real training split.

    python -m flows.classifier digits [params.yaml]      (what `dvc repro classifier_digits` runs)

What it is for and what it writes: `tasks.studies.images.reference`.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.cli import exit_process, main
from tasks.studies import STUDIES, load_params
from tasks.studies.images import reference


def check_inputs(study: str, params_file: str, overlay: str | None = None, root: str = ".") -> None:
    """The study's params section and real data exist and fit together (one-line errors otherwise)."""
    reference.check_inputs(load_params(params_file, overlay), study, Path(root))


@flow(name="reference-classifier", flow_run_name="{study}", log_prints=True)
def classifier_flow(study: str = "digits", params_file: str = "params.yaml", root: str = ".",
                    overlay: str | None = None) -> float:
    """Train the reference classifier of `study` on its real training split; return its held-out accuracy."""
    params = load_params(params_file, overlay)
    scores = reference.train_reference(params, study, Path(root))
    get_run_logger().info(f"{study} reference classifier: held-out accuracy {scores['test_accuracy']:.4f} "
                          f"on {scores['test_images']} images")
    return scores["test_accuracy"]


if __name__ == "__main__":
    exit_process(main(classifier_flow, [s.name for s in STUDIES if s.owns_classifier], preflight=check_inputs))

"""The reference classifier of an image study, trained once on the real training split.

    python -m flows.classifier params.yaml digits      (what `dvc repro classifier_digits` runs)

It labels generated images (`minority_ratio`) and its penultimate features define
`fid_classifier` (the MAD paper's LeNet-FID). It learns every class of the dataset, not only the
study's, so samples that drift to another digit are recognised as such. Output: the weights in
data/reference/<study>/classifier.pt and its held-out accuracy in metrics/reference/<study>.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from prefect import flow, get_run_logger

from flows.cli import main
from models.classifier import accuracy, save_classifier, train_classifier
from models.ple import default_device
from tasks import storage
from tasks.image_study import IMAGE_STUDIES, image_params, real_splits, with_channels
from tasks.loop import generator
from tasks.params import load_params
from tasks.paths import StudyPaths


def check_inputs(params_file: str, study: str, root: str = ".") -> None:
    """The study's params section and real data exist and fit together (one-line errors otherwise)."""
    params = load_params(params_file)
    real_splits(image_params(params, study), params.seed, StudyPaths(Path(root), study).raw, study)


@flow(name="reference-classifier", log_prints=True)
def classifier_flow(params_file: str = "params.yaml", root: str = ".", study: str = "digits") -> float:
    """Train the reference classifier of `study` on its real training split; return its held-out accuracy."""
    params = load_params(params_file)
    section, paths = image_params(params, study), StudyPaths(Path(root), study)
    train, test = real_splits(section, params.seed, paths.raw, study)
    settings = section.classifier
    model = train_classifier(with_channels(train.images), train.labels, int(train.labels.max()) + 1,
                             features=settings.features, epochs=settings.epochs, batch_size=settings.batch_size,
                             lr=settings.lr, generator=generator(params.seed, "classifier", study),
                             device=default_device())
    held_out = accuracy(model, with_channels(test.images), test.labels)
    per_class = {str(c): accuracy(model, with_channels(test.images[test.labels == c]), test.labels[test.labels == c])
                 for c in section.classes}
    save_classifier(model, paths.classifier)
    storage.write_text(paths.classifier_metrics, json.dumps(
        {"test_accuracy": held_out, "test_accuracy_by_class": per_class, "test_images": len(test)}, indent=2))
    get_run_logger().info(f"{study} reference classifier: held-out accuracy {held_out:.4f} on {len(test)} images")
    return held_out


if __name__ == "__main__":
    sys.exit(main(classifier_flow, studies=IMAGE_STUDIES, preflight=check_inputs))

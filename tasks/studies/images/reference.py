"""The reference classifier of an image study, trained once on the real training split.

It labels generated images (`minority_ratio`) and its penultimate features define
`fid_classifier` (the MAD paper's LeNet-FID). It learns every class of the dataset, not only the
study's, so samples that drift to another digit are recognised as such. Output: the weights in
data/reference/<study>/classifier.pt and its held-out accuracy in metrics/reference/<study>.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from models.classifier import accuracy, train_classifier
from tasks.infra import checkpoints, storage
from tasks.infra.device import default_device
from tasks.infra.paths import StudyPaths
from tasks.loop import generator
from tasks.studies.images.data import with_channels
from tasks.studies.images.study import real_splits, section_of


def check_inputs(params, study: str, root: Path) -> None:
    """The study's params section and real data exist and fit together (one-line errors otherwise)."""
    real_splits(section_of(params, study), params.seed, StudyPaths(root, study).raw, study)


def train_reference(params, study: str, root: Path) -> dict:
    """Train, save and score the reference classifier of `study`; return its held-out accuracies."""
    section, paths = section_of(params, study), StudyPaths(root, study)
    train, test = real_splits(section, params.seed, paths.raw, study)
    settings = section.classifier
    model = train_classifier(with_channels(train.images), train.labels, int(train.labels.max()) + 1,
                             features=settings.features, epochs=settings.epochs, batch_size=settings.batch_size,
                             lr=settings.lr, generator=generator(params.seed, "classifier", study),
                             device=default_device())
    held_out = accuracy(model, with_channels(test.images), test.labels)
    per_class = {str(c): accuracy(model, with_channels(test.images[test.labels == c]), test.labels[test.labels == c])
                 for c in section.classes}
    checkpoints.save_classifier(model, paths.classifier)
    scores = {"test_accuracy": held_out, "test_accuracy_by_class": per_class, "test_images": len(test)}
    storage.write_text(paths.classifier_metrics, json.dumps(scores, indent=2))
    return scores

"""The image studies (PLE paper's MNIST VAE): a VAE trained by MLE, hyper-MLE and PLE on an
imbalanced set of digits, generation after generation, with FID and the minority's share.

    python -m flows.images params.yaml digits      (what `dvc repro digits` runs; also mnist, cifar10)

Needs the study's reference classifier (`python -m flows.classifier params.yaml <study>`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import torch
from prefect import flow

from flows.cli import main
from flows.self_consuming import run_study
from models.classifier import load_classifier
from models.ple import default_device
from tasks import fid, image_figures, storage
from tasks.image_data import draw_imbalanced
from tasks.image_study import IMAGE_STUDIES, ImageStudy, image_params, real_splits, reference_size
from tasks.loop import generator
from tasks.params import load_params
from tasks.paths import StudyPaths


def build_study(params_file: str, study: str, root: Path = Path(".")) -> ImageStudy:
    """The study with its data, held-out reference set and classifier; every input checked first."""
    params = load_params(params_file)
    section, paths = image_params(params, study), StudyPaths(root, study)
    train, test = real_splits(section, params.seed, paths.raw, study)
    size = reference_size(test, section.classes, section.proportions)
    reference = draw_imbalanced(test, section.classes, section.proportions, size,
                                generator(params.seed, "reference", study))
    if not paths.classifier.exists():
        raise storage.InputUnavailableError(
            f"{paths.classifier} is missing; train it with `dvc repro classifier_{study}` "
            f"(or python -m flows.classifier {params_file} {study})")
    inception = None
    if section.fid_inception:
        try:
            inception = fid.inception_extractor(device=default_device())
        except fid.InceptionUnavailable as exc:
            print(f"fid_inception skipped: {exc}")  # a Prefect log line inside the flow (log_prints)
    return ImageStudy(section, study, train, reference, load_classifier(paths.classifier),
                      storage.md5(paths.classifier), inception, default_device())


@flow(name="images", log_prints=True)
def images_flow(params_file: str = "params.yaml", root: str = ".", study: str = "digits") -> pd.DataFrame:
    """Train a generator on an imbalanced image set by every method, generation after generation."""
    params = load_params(params_file)
    image_study = build_study(params_file, study, Path(root))
    section = image_study.params
    methods = params.methods_of(study)

    def figures(tidy: pd.DataFrame, curve_table: pd.DataFrame, paths: StudyPaths) -> list[Path]:
        title = (f"{study}: {section.generator} on classes {section.classes} at {section.proportions}, "
                 f"{params.loop.mode} loop, n={section.n_samples}, {section.seeds} seeds (mean ± SE, median)")
        return [image_figures.curves(curve_table, paths, title),
                image_figures.side_by_side(paths, methods, section.generations),
                *image_figures.sample_grids(paths, methods, section.generations)]

    return run_study([image_study], params, Path(root), figures)


if __name__ == "__main__":
    sys.exit(main(images_flow, studies=IMAGE_STUDIES, preflight=build_study))

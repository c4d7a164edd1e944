"""The image studies (PLE paper's MNIST VAE): a generator trained by mle, hyper_mle and ple on an
imbalanced set of classes, generation after generation, with FID and the minority's share.

`digits` runs offline on scikit-learn's 8x8 digits; `mnist` and `cifar10` read files under
data/raw/<dataset> (README). `<dataset>_gan` and `<dataset>_diffusion` run a GAN and a diffusion
model on the same data (the PLE paper's Fig. 2). Every study of a dataset is scored by one reference
classifier, trained first by the stage `classifier_<dataset>`, so that fid_classifier compares
across generators.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pandas as pd

from tasks.infra.paths import StudyPaths
from tasks.studies.base import StudySpec
from tasks.studies.images import figures as image_figures
from tasks.studies.images.params import ImageParams
from tasks.studies.images.study import build


def figures(studies, params, tidy: pd.DataFrame, curve_table: pd.DataFrame, paths: StudyPaths) -> list[Path]:
    """The metric curves, FID against generation (Fig. 2), the diversity metrics, the samples of every
    generation side by side, and one sample grid per generation."""
    study = studies[0]
    section, methods = study.params, params.methods_of(study.experiment)
    title = (f"{study.experiment}: {section.generator} on classes {section.classes} at {section.proportions}, "
             f"{params.loop.mode} loop, n={section.n_samples}, {section.seeds} seeds (mean ± SE, median)")
    return [image_figures.curves(curve_table, paths, title), image_figures.fid_by_generation(curve_table, paths, title),
            image_figures.diversity(curve_table, paths, title),
            image_figures.side_by_side(paths, methods, section.generations),
            *image_figures.sample_grids(paths, methods, section.generations)]


def image_study(name: str, dataset: str, **options) -> StudySpec:
    """An image study on `dataset`, scored by the reference classifier of the study named after the dataset."""
    return StudySpec(name=name, section=name, params=ImageParams,
                     build=partial(build, study=name, classifier=dataset), figures=figures,
                     report_metrics=tuple(image_figures.CURVES), classifier=dataset, sweepable=False, **options)


DIGITS = image_study("digits", "digits")
DIGITS_GAN = image_study("digits_gan", "digits")
DIGITS_DIFFUSION = image_study("digits_diffusion", "digits")
MNIST = image_study("mnist", "mnist", required=False, raw_data="mnist")
MNIST_GAN = image_study("mnist_gan", "mnist", required=False, raw_data="mnist")
MNIST_DIFFUSION = image_study("mnist_diffusion", "mnist", required=False, raw_data="mnist")
CIFAR10 = image_study("cifar10", "cifar10", required=False, raw_data="cifar10")
CIFAR10_GAN = image_study("cifar10_gan", "cifar10", required=False, raw_data="cifar10")
CIFAR10_DIFFUSION = image_study("cifar10_diffusion", "cifar10", required=False, raw_data="cifar10")

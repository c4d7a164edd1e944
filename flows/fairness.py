"""The fairness study: does a classifier trained on the loop's data turn unfair, and which method keeps it fair?

    python -m flows.fairness params.yaml      (what `dvc repro fairness` runs)

A conditional VAE (given y only) is trained by mle, hyper_mle, ple and the baselines upweight and
oversample on digits whose protected attribute s (inverted contrast) agrees with y 90% of the time;
every generation a classifier of y is retrained on D_g and scored on a balanced real test set.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from prefect import flow

from flows.cli import main
from flows.self_consuming import run_study
from models.ple import default_device
from tasks import fairness_figures
from tasks.attribute_data import balanced_test, draw_biased, targets
from tasks.fairness_study import FairnessStudy
from tasks.image_data import load_images, split
from tasks.loop import generator
from tasks.params import ParamsError, load_params
from tasks.paths import StudyPaths


def build_study(params_file: str, root: Path = Path(".")) -> FairnessStudy:
    """The study with its real splits and balanced test set; a ParamsError when they do not fit the params."""
    params = load_params(params_file)
    section = params.fairness
    raw = StudyPaths(Path(root), section.dataset).raw
    if section.dataset == "digits":
        train, test = split(load_images("digits", raw), section.test_fraction, generator(params.seed, "split", "fairness"))
    else:
        train, test = load_images(section.dataset, raw, train=True), load_images(section.dataset, raw, train=False)
    if len(targets(train, section.threshold).unique()) < 2:
        raise ParamsError(f"fairness.threshold = {section.threshold} puts every {section.dataset} class on one side; "
                          f"choose a class between 1 and {int(train.labels.max())}")
    try:
        draw_biased(train, section.threshold, section.bias, section.n_samples, generator(params.seed, "check"))
    except ValueError as exc:
        raise ParamsError(f"fairness.n_samples = {section.n_samples}: {exc}") from None
    return FairnessStudy(section, params.seed, train, balanced_test(test, section.threshold,
                         generator(params.seed, "test", "fairness")), default_device())


@flow(name="fairness", log_prints=True)
def fairness_flow(params_file: str = "params.yaml", root: str = ".") -> pd.DataFrame:
    """Fairness of a classifier of y retrained on every generation's data, for every method."""
    params = load_params(params_file)
    study = build_study(params_file, Path(root))
    methods = params.methods_of("fairness")

    def figures(tidy: pd.DataFrame, curve_table: pd.DataFrame, paths: StudyPaths) -> list[Path]:
        section = study.params
        title = (f"fairness: conditional VAE on {section.dataset}, y = class >= {section.threshold}, "
                 f"s = {section.attribute}, bias {section.bias}, {params.loop.mode} loop, n={section.n_samples}, "
                 f"{section.seeds} seeds (mean ± SE, median)")
        return [fairness_figures.curves(curve_table, paths, section.downstream.modes, title),
                fairness_figures.last_generation_table(tidy, paths, section.downstream.modes),
                fairness_figures.samples(study, paths, methods)]

    return run_study([study], params, Path(root), figures)


if __name__ == "__main__":
    sys.exit(main(fairness_flow, preflight=build_study))

"""The digits image study through its flows: reference classifier, VAE generations, metrics, figures."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from mlflow import MlflowClient

from flows.classifier import classifier_flow
from flows.study import study_flow
from tasks.studies import load_params
from tasks.studies.images.study import build
from tasks.infra import storage
from tasks.infra.checkpoints import load_classifier
from tasks.studies.images.fid import extract_features
from tasks.errors import ParamsError

from conftest import ROOT, colour, figure_pixels, ink, subprocess_env, write_params

TINY = {"n_samples": 60, "generations": 2, "seeds": 2, "eval_samples": 60,
        "classifier": {"features": 16, "epochs": 8, "batch_size": 64, "lr": 0.003},
        "ple": {"lam": 1.0, "steps": 40, "lr": 0.003, "batch_fraction": 0.5}}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, prefect_api):
    """One tiny digits study, shared by the checks below."""
    root = tmp_path_factory.mktemp("digits")
    params = write_params(root, digits={**TINY, "fid_inception": True})
    accuracy = classifier_flow(params_file=str(params), root=str(root), study="digits")
    tidy = study_flow(study="digits", params_file=str(params), root=str(root))
    return root, accuracy, tidy


def test_reference_classifier_is_accurate_and_versioned(digits_run):
    root, accuracy, _ = digits_run
    assert accuracy > 0.8  # 8 epochs on ~1260 digits; the default settings reach about 0.97
    report = json.loads((root / "metrics/reference/digits.json").read_text())
    assert report["test_accuracy"] == accuracy and set(report["test_accuracy_by_class"]) == {"3", "6"}
    study, = build(load_params(root / "params.yaml"), root, "digits", "digits")
    classifier = load_classifier(root / "data/reference/digits/classifier.pt")  # the stored file, read back
    logits = extract_features(classifier, study.reference.images, device=torch.device("cpu"))
    assert (torch.from_numpy(logits.argmax(1)) == study.reference.labels).double().mean() > 0.8


def test_generations_store_uint8_images_with_their_shape(digits_run):
    root, _, _ = digits_run
    for method in ("mle", "hyper_mle", "ple"):
        path = storage.dataset_path(root / "data/generations/digits" / method, 1)
        assert pq.read_schema(path).field("x").type.value_type == "uint8"
        assert json.loads(storage.read_metadata(path)["event_shape"]) == [8, 8]
        data = storage.read_dataset(path)
        assert data.values.dtype == torch.uint8 and data.values.shape == (2, 60, 8, 8)
        assert not data.is_real.any()  # replace loop: D_1 is all synthetic


def test_real_draw_has_exact_class_counts(digits_run):
    """D_0 of each seed holds exactly 54 threes and 6 sixes (n = 60 at 0.9 : 0.1), read from the labels of the
    training images they are; the held-out reference holds 55 threes and 6 sixes (all 55 held-out 3s at 0.9)."""
    root, _, _ = digits_run
    study, = build(load_params(root / "params.yaml"), root, "digits", "digits")
    labels = {}
    for image, label in zip(study.train.images, study.train.labels.tolist()):
        labels.setdefault(image.numpy().tobytes(), set()).add(label)
    real = storage.read_dataset(storage.dataset_path(root / "data/generations/digits/mle", 0)).values
    for seed in real:
        found = [labels[image.numpy().tobytes()] for image in seed]
        assert all(len(label) == 1 for label in found)  # each image is one training image's
        assert Counter(label for (label,) in found) == {3: 54, 6: 6}
    assert Counter(study.reference.labels.tolist()) == {3: 55, 6: 6}


def test_metrics_per_method_and_no_silent_inception(digits_run):
    _, _, tidy = digits_run
    metrics = set(tidy.metric)
    assert {"fid_classifier", "minority_ratio", "share_other", "precision", "recall", "density", "coverage",
            "minority_coverage", "vendi", "data_loss"} <= metrics
    assert "fid_inception" not in metrics  # no weights offline: skipped, never a zero
    assert {"response", "response_slope_mle", "penalty"} <= set(tidy[tidy.method == "ple"].metric)
    fid = tidy[tidy.metric == "fid_classifier"].value
    assert (fid > 0).all() and np.isfinite(fid).all()
    assert (tidy[tidy.metric == "minority_ratio"].value >= 0).all()


def test_figures_and_mlflow(digits_run):
    root, _, _ = digits_run
    figures = root / "figures/digits"
    curves = figure_pixels(figures / "curves.png", (5.2 * 5, 4))  # fid_classifier, minority_ratio, share_other,
    assert colour(curves) > 0.005  # data_loss, response: mean lines and SE bands drawn
    diversity = figure_pixels(figures / "diversity.png", (5.2 * 6, 4))  # precision, recall, density, coverage,
    assert colour(diversity) > 0.005  # minority_coverage, vendi
    side_by_side = figure_pixels(figures / "samples_by_generation.png", (1.8 * 2, 1.9 * 3))  # 2 generations, 3 methods
    assert ink(side_by_side) > 0.3
    grids = sorted(p.name for p in (figures / "samples").glob("*.png"))
    assert grids == [f"{m}_gen_{g:03d}.png" for m in ("hyper_mle", "mle", "ple") for g in (0, 1)]
    for name in grids:
        assert ink(figure_pixels(figures / "samples" / name, (4, 4))) > 0.3, name  # a mosaic of 60 digits
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("digits").experiment_id],
                              filter_string="tags.level = 'method' and tags.method = 'ple'", max_results=1)
    run = runs[0]
    assert run.data.tags["device"] == run.data.params["device"] == "cpu"
    assert run.data.params["torch"] == torch.__version__
    history = client.get_metric_history(run.info.run_id, "fid_classifier_mean")
    assert [m.step for m in history] == [0, 1]


def test_missing_classifier_stops_with_one_line_before_the_flow(tmp_path, prefect_api):
    params = write_params(tmp_path, digits=TINY)
    cmd = [sys.executable, "-m", "flows.study", "digits", str(params)]
    env = {**subprocess_env(prefect_api), "PYTHONPATH": str(ROOT)}
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "dvc repro classifier_digits" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "data").exists() and not (tmp_path / "metrics").exists()


@pytest.mark.parametrize("bad, message", [
    ({"n_samples": 1000}, r"digits.n_samples = 1000: .*images of class 3 but 900 are needed"),
    ({"classes": [3, 12]}, r"digits.classes = \[3, 12\]: .*12"),
    ({"generator": "gmmn", "preset": "paper"}, r"digits: preset 'paper' is not one of the gmmn presets: small, large"),
])
def test_params_the_data_cannot_meet_are_named(tmp_path, bad, message):
    params = write_params(tmp_path, digits={**TINY, **bad})
    with pytest.raises(ParamsError, match=message):
        build(load_params(params), tmp_path, "digits", "digits")


def test_the_gmmn_generator_runs_through_the_same_study(digits_run, tmp_path):
    root, _, _ = digits_run
    classifier = tmp_path / "data/reference/digits/classifier.pt"
    classifier.parent.mkdir(parents=True)
    shutil.copy2(root / "data/reference/digits/classifier.pt", classifier)
    params = write_params(tmp_path, digits={**TINY, "generator": "gmmn", "methods": ["mle", "ple"]})
    tidy = study_flow(study="digits", params_file=str(params), root=str(tmp_path))
    assert set(tidy.method) == {"mle", "ple"} and (tidy[tidy.metric == "fid_classifier"].value > 0).all()
    loss = tidy[tidy.metric == "data_loss"].value
    assert np.isfinite(loss).all() and (loss.abs() < 2).all()  # MMD^2 with kernels summing to at most 4
    images = storage.read_dataset(storage.dataset_path(tmp_path / "data/generations/digits/ple", 1)).values
    assert images.dtype == torch.uint8 and images.shape == (2, 60, 8, 8)


@pytest.mark.slow
def test_hyper_mle_follows_the_minority_share_at_generation_0(digits_run):
    """The default hypernetwork and training on digits' own D_0 (n = 140, 9:1), 3 seeds, a shorter
    training than the default (300 steps): H applied to probes with 10 to 50% sixes follows their
    share at more than 0.3 of a fresh MLE fit's slope (measured with the default 1000 steps: 0.82 ± 0.09)."""
    from tasks.loop import generator, real_dataset

    root, _, _ = digits_run
    params = load_params(write_params(root / "response", digits={
        "n_samples": 140, "seeds": 3, "eval_samples": 300, "classifier": TINY["classifier"],
        "ple": {"steps": 300, "lr": 0.003}}))
    study = build(params, root, "digits", "digits")[0]
    x = study.draw_real(140, generator(0, "real", 0))
    fitted = study.fit(real_dataset(x), "hyper_mle", generator(0, "fit"))
    response = study.response_metrics(fitted)
    assert float(response["response_slope_mle"].mean()) > 0.5  # MLE follows the share (about 1)
    assert float(response["response"].mean()) > 0.3

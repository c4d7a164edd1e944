"""The fairness study through its flow: biased real data, conditional generations, downstream fairness, outputs."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from flows.cli import main
from flows.study import preflight, study_flow
from tasks.studies.fairness import attributes as ad
from tasks.infra import storage
from tasks.studies.fairness.group_metrics import GROUP_ACCS

from conftest import ROOT, colour, figure_pixels, ink, subprocess_env, write_params

METHODS = ["mle", "hyper_mle", "ple", "upweight", "oversample"]
MODES = ["scratch", "finetune", "selective"]
TINY = {"n_samples": 80, "generations": 2, "seeds": 2, "methods": METHODS,
        "downstream": {"modes": MODES, "top_k": 50.0, "features": 8, "epochs": 3, "finetune_epochs": 1,
                       "batch_size": 32, "lr": 0.003, "finetune_lr": 0.001},
        "ple": {"lam": 1.0, "steps": 30, "lr": 0.003, "batch_fraction": 0.5}}


@pytest.fixture(scope="module")
def fairness_run(tmp_path_factory, prefect_api):
    root = tmp_path_factory.mktemp("fairness")
    params = write_params(root, fairness=TINY)
    return root, study_flow(study="fairness", params_file=str(params), root=str(root))


def rows_of(root, method: str, generation: int) -> torch.Tensor:
    return storage.read_dataset(storage.dataset_path(root / "data/generations/fairness" / method, generation)).values


def test_real_generation_has_exact_groups_and_generated_ones_carry_labels(fairness_run):
    root, tidy = fairness_run
    for method in METHODS:
        real = rows_of(root, method, 0)
        assert real.dtype == torch.uint8 and real.shape == (2, 80, 65)
        for seed_rows in real:
            images, y = ad.split_rows(seed_rows, (8, 8))
            assert torch.bincount(2 * y + ad.attribute_of(images), minlength=4).tolist() == [36, 4, 4, 36]
        generated = rows_of(root, method, 1)
        assert generated.shape == (2, 80, 65) and set(generated[..., -1].unique().tolist()) <= {0, 1}
    first = tidy[tidy.generation == 0]
    assert np.allclose(first[first.metric == "rare_ratio"].value, 1.0)
    assert np.allclose(first[first.metric == "share_y0_s1"].value, 0.05)


def test_fairness_metrics_per_mode_are_consistent(fairness_run):
    _, tidy = fairness_run
    wide = tidy.pivot_table(index=["method", "seed", "generation"], columns="metric", values="value")
    for mode in MODES:
        groups = wide[[f"{name}_{mode}" for name in GROUP_ACCS]]
        assert ((groups >= 0) & (groups <= 1)).all().all()
        assert np.allclose(wide[f"wga_{mode}"], groups.min(axis=1))
        assert (wide[f"eo_{mode}"] <= wide[f"eo_max_{mode}"] + 1e-12).all()
        # the balanced test set has equal groups, so acc is the mean of the four group accuracies
        assert np.allclose(wide[f"acc_{mode}"], groups.mean(axis=1))
    hyper = wide.loc[["hyper_mle", "ple"]]
    assert hyper["response"].notna().all() and wide.loc["mle", "response"].isna().all()


def test_generation_zero_is_the_same_for_every_method(fairness_run):
    """D_0 and the downstream classifiers' random numbers do not depend on the method."""
    _, tidy = fairness_run
    first = tidy[(tidy.generation == 0) & tidy.metric.str.contains("_scratch|_finetune|_selective")]
    spread = first.groupby(["metric", "seed"])["value"].agg(lambda v: v.max() - v.min())
    assert (spread == 0).all()


def test_outputs_table_and_mlflow(fairness_run):
    root, _ = fairness_run
    # rows acc, eo, wga, group shares; columns the 3 modes
    assert colour(figure_pixels(root / "figures/fairness/curves.png", (4.6 * 3, 3.4 * 4))) > 0.005
    grid = figure_pixels(root / "figures/fairness/samples_by_generation.png", (1.9 * 2, 2.3 * len(METHODS)))
    assert ink(grid) > 0.2  # image mosaics: 2 generations of every method
    table = (root / "metrics/fairness/last_generation.md").read_text().splitlines()
    body = [line for line in table if line.startswith("| ") and not line.startswith("| method")]
    assert len(body) == len(METHODS) * len(MODES)
    curves = pd.read_csv(root / "metrics/fairness/curves.csv")
    mle = curves[(curves.method == "mle") & (curves.generation == 1)].iloc[0]
    row = next(line for line in body if line.startswith("| mle | scratch |"))
    assert f"{mle['acc_scratch_mean']:.3f} ± {mle['acc_scratch_se']:.3f}" in row
    client = MlflowClient()
    run = client.search_runs([client.get_experiment_by_name("fairness").experiment_id],
                             filter_string="tags.method = 'upweight' and tags.level = 'method'", max_results=1)[0]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eo_selective_mean")] == [0, 1]


@pytest.mark.parametrize("bad, message", [
    ({"bias": 1.0}, "fairness.bias = 1.0 is invalid: Input should be less than 1"),
    ({"bias": 0.0}, "fairness.bias = 0.0 is invalid: Input should be greater than 0"),
    ({"downstream": {**TINY["downstream"], "top_k": 0.0}}, "fairness.downstream.top_k = 0.0 is invalid"),
    ({"downstream": {**TINY["downstream"], "top_k": 150.0}}, "less than or equal to 100"),
    ({"dataset": "cifar10"}, "dataset 'cifar10' has no protected attribute here; use one of digits, mnist"),
    ({"threshold": 10}, "fairness.threshold = 10 puts every digits class on one side"),
    ({"n_samples": 1500}, "fairness.n_samples = 1500: .*use a smaller n_samples"),
    ({"methods": ["mle", "smote"]}, "fairness.methods"),
])
def test_bad_input_stops_with_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, bad, message):
    params = write_params(tmp_path, fairness={**TINY, **bad})
    monkeypatch.chdir(tmp_path)
    assert main(study_flow, ["fairness"], ["fairness", str(params)], preflight=preflight) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert re.search(message, err[0]), err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_command_line_runs_the_preflight(tmp_path, prefect_api):
    params = write_params(tmp_path, fairness={**TINY, "threshold": 10})
    result = subprocess.run([sys.executable, "-m", "flows.study", "fairness", str(params)], cwd=tmp_path,
                            env={**subprocess_env(prefect_api), "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert result.returncode == 2 and "fairness.threshold = 10" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]

"""The GAN and diffusion generators in the digits studies: better than untrained at generation 0, and
a killed study resuming to the same tables. (DDIM against DDPM's ancestral sampler is checked where
the exact noise predictor is known, in tests/test_diffusion.py: on a trained digits model the two
differ by the model's error, not only by noise.)"""

from __future__ import annotations

import math
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flows.cli import main
from flows.study import study_flow
from models.ple import Fitted, TargetEnsemble
from tasks.loop import real_dataset
from tasks.studies import load_params
from tasks.studies.images.reference import train_reference
from tasks.studies.images.study import build

from conftest import colour, figure_pixels, subprocess_env, wait_for, write_params

CLASSIFIER = {"features": 16, "epochs": 8, "batch_size": 64, "lr": 0.003}
FIT = {"gan": {"ple": {"lam": 1.0, "steps": 200, "lr": 0.002}},
       "diffusion": {"ple": {"lam": 1.0, "steps": 250, "lr": 0.002}}}


CLASSIFIER_FILE = Path("data/reference/digits/classifier.pt")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    """A digits reference classifier trained once (8 epochs) for every test here."""
    root = tmp_path_factory.mktemp("classifier")
    train_reference(load_params(write_params(root, digits={"classifier": CLASSIFIER})), "digits", root)
    return root / CLASSIFIER_FILE


def _with_classifier(root: Path, classifier: Path) -> None:
    (root / CLASSIFIER_FILE).parent.mkdir(parents=True, exist_ok=True)
    (root / CLASSIFIER_FILE).write_bytes(classifier.read_bytes())


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, classifier):
    """digits_gan and digits_diffusion at their default sizes but fewer steps, fitted by mle at
    generation 0: {kind: (study, fitted model)}."""
    root = tmp_path_factory.mktemp("generators")
    params = load_params(write_params(root, digits_gan={**FIT["gan"], "eval_samples": 300},
                                      digits_diffusion={**FIT["diffusion"], "eval_samples": 300}))
    _with_classifier(root, classifier)
    out = {}
    for kind in ("gan", "diffusion"):
        study = build(params, root, f"digits_{kind}", "digits")[0]
        data = real_dataset(study.draw_real(study.n_samples, torch.Generator().manual_seed(1)))
        out[kind] = study, study.fit(data, "mle", torch.Generator().manual_seed(2))
    return out


def _fid(study, model: Fitted) -> np.ndarray:
    data = real_dataset(study.draw_real(study.n_samples, torch.Generator().manual_seed(0)))
    return study.evaluate(model, data)["fid_classifier"].numpy()


@pytest.mark.parametrize("kind", ["gan", "diffusion"])
def test_trained_generator_beats_an_untrained_one_by_more_than_4_se(fitted, kind):
    study, model = fitted[kind]
    trained = _fid(study, model)
    untrained = _fid(study, Fitted(TargetEnsemble(study.make_generator, study.seeds).weights()))
    se = math.hypot(trained.std(ddof=1), untrained.std(ddof=1)) / math.sqrt(study.seeds)
    assert untrained.mean() - trained.mean() > 4 * se, (trained, untrained)


SMALL = {"n_samples": 60, "generations": 3, "seeds": 2, "eval_samples": 60,
         "ple": {"lam": 1.0, "steps": 15, "lr": 0.002}}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gan", "diffusion"])
def test_killed_study_resumes_to_the_same_tables(tmp_path, prefect_api, monkeypatch, classifier, kind):
    """A study killed (SIGKILL) after its first generations and run again ends with the tables and
    Parquet files of an uninterrupted run; its figures include the FID figure (Fig. 2)."""
    study = f"digits_{kind}"
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    for root in (reference, killed):
        write_params(root, **{study: SMALL})
        _with_classifier(root, classifier)
    study_flow(study=study, params_file=str(reference / "params.yaml"), root=str(reference))
    params = killed / "params.yaml"

    env = subprocess_env(prefect_api)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    process = subprocess.Popen([sys.executable, "-m", "flows.study", study, str(params)], cwd=killed, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    marker = killed / f"data/generations/{study}/hyper_mle/gen_001.json"
    wait_for(lambda: marker.exists() or process.poll() is not None, 180, f"{marker}")
    assert marker.exists() and process.poll() is None, process.communicate()[0][-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / f"metrics/{study}/summary.json").exists()

    monkeypatch.chdir(killed)
    assert main(study_flow, [study], [study, str(params)]) == 0
    for name in ("per_generation.csv", "curves.csv", "summary.json"):
        assert (killed / "metrics" / study / name).read_bytes() == (reference / "metrics" / study / name).read_bytes()
    for path in sorted((reference / "data/generations").rglob("*.parquet")):
        assert (killed / path.relative_to(reference)).read_bytes() == path.read_bytes(), path
    fid = figure_pixels(killed / "figures" / study / "fid.png", (5.2 * 2, 4))  # fid_classifier, response
    assert colour(fid) > 0.005

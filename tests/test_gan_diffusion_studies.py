"""The GAN and diffusion generators in the digits studies: better than untrained at generation 0,
DDIM with every step against DDPM's ancestral sampler, and a killed study resuming to the same tables."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import functional_call

from flows.cli import main
from flows.study import study_flow
from models.ple import Fitted, TargetEnsemble
from tasks.loop import real_dataset
from tasks.studies import load_params
from tasks.studies.images import fid
from tasks.studies.images.reference import train_reference
from tasks.studies.images.study import build

from conftest import subprocess_env, wait_for, write_params

CLASSIFIER = {"features": 16, "epochs": 8, "batch_size": 64, "lr": 0.003}
FIT = {"gan": {"ple": {"lam": 1.0, "steps": 300, "lr": 0.002}},
       "diffusion": {"ple": {"lam": 1.0, "steps": 400, "lr": 0.002}}}


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """digits_gan and digits_diffusion at their default sizes but fewer steps, scored by a quickly
    trained digits classifier."""
    root = tmp_path_factory.mktemp("generators")
    params = load_params(write_params(root, digits={"classifier": CLASSIFIER},
                                      digits_gan={**FIT["gan"], "eval_samples": 300},
                                      digits_diffusion={**FIT["diffusion"], "eval_samples": 300}))
    train_reference(params, "digits", root)
    return {kind: build(params, root, f"digits_{kind}", "digits")[0] for kind in ("gan", "diffusion")}


def _fid(study, fitted: Fitted) -> np.ndarray:
    return study.evaluate(fitted, real_dataset(study.draw_real(study.n_samples, torch.Generator().manual_seed(0))))[
        "fid_classifier"].numpy()


@pytest.mark.parametrize("kind", ["gan", "diffusion"])
def test_trained_generator_beats_an_untrained_one_by_more_than_4_se(studies, kind):
    study = studies[kind]
    data = real_dataset(study.draw_real(study.n_samples, torch.Generator().manual_seed(1)))
    trained = _fid(study, study.fit(data, "mle", torch.Generator().manual_seed(2)))
    untrained = _fid(study, Fitted(TargetEnsemble(study.make_generator, study.seeds).weights()))
    se = math.hypot(trained.std(ddof=1), untrained.std(ddof=1)) / math.sqrt(study.seeds)
    assert untrained.mean() - trained.mean() > 4 * se, (trained, untrained)


def test_ddim_with_every_step_matches_ancestral_sampling_within_noise(studies):
    """Per seed, the FID of n images by DDIM (eta = 0, all T steps) and by DDPM's ancestral sampler
    (eta = 1, all T steps) of the same trained model; the mean paired difference is within 4 SE of 0,
    the SE from the seeds and from a second draw of both samplers."""
    study = studies["diffusion"]
    data = real_dataset(study.draw_real(study.n_samples, torch.Generator().manual_seed(1)))
    weights = study.fit(data, "mle", torch.Generator().manual_seed(2)).estimate
    target, real = study.make_generator(), study.reference_features[0]
    steps = target.config.timesteps

    def fid_of(seed: int, eta: float, draw: int) -> float:
        own = {name: w[seed] for name, w in weights.items()}
        images = functional_call(target, own, (300, torch.Generator().manual_seed(draw), steps, eta), {"op": "sample"})
        return fid.frechet_distance(real, study.features((images.clamp(0, 1) * 255).round().to(torch.uint8)))

    gaps = np.array([fid_of(s, 0.0, d) - fid_of(s, 1.0, d) for s in range(study.seeds) for d in (10, 11)])
    assert abs(gaps.mean()) < 4 * gaps.std(ddof=1) / math.sqrt(len(gaps)), gaps


SMALL = {"n_samples": 60, "generations": 3, "seeds": 2, "eval_samples": 60,
         "ple": {"lam": 1.0, "steps": 15, "lr": 0.002}}


@pytest.mark.parametrize("kind", ["gan", "diffusion"])
def test_killed_study_resumes_to_the_same_tables(tmp_path, prefect_api, monkeypatch, kind):
    """A study killed (SIGKILL) after its first generations and run again ends with the tables and
    Parquet files of an uninterrupted run; its figures include the FID figure (Fig. 2)."""
    study = f"digits_{kind}"
    sections = {"digits": {"classifier": CLASSIFIER}, study: SMALL}
    reference = tmp_path / "reference"
    params = write_params(reference, **sections)
    train_reference(load_params(params), "digits", reference)
    study_flow(study=study, params_file=str(params), root=str(reference))

    killed = tmp_path / "killed"
    params = write_params(killed, **sections)
    classifier = Path("data/reference/digits/classifier.pt")
    (killed / classifier).parent.mkdir(parents=True)
    (killed / classifier).write_bytes((reference / classifier).read_bytes())
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
    assert (killed / "figures" / study / "fid.png").stat().st_size > 1000

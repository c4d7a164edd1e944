"""params.yaml validation: every bad value stops with one clear line, exit code 2, nothing written."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from flows.cli import main
from flows.study import preflight, study_flow
from tasks.errors import ParamsError
from tasks.params import LoopParams, flatten
from tasks.studies import load_params, spec
from tasks.studies.base import dataset_bytes
from tasks.studies.images.data import load_images
from tasks.studies.images.study import ImageStudy

from conftest import ROOT, subprocess_env, write_params

BAD = [
    # (sections to override, text the message must contain)
    ({"methods": ["mle", "bayes"]}, "methods"),
    ({"methods": []}, "methods"),
    ({"methods": ["mle", "mle"]}, "only once"),
    ({"gaussian": {"generations": -3}}, "gaussian.generations = -3"),
    ({"gaussian": {"generations": 0}}, "gaussian.generations = 0"),
    ({"gaussian": {"n_samples": 1}}, "gaussian.n_samples = 1"),
    ({"gaussian": {"n_samples": "10"}}, "gaussian.n_samples = '10'"),
    ({"gaussian": {"seeds": 2.5}}, "gaussian.seeds = 2.5"),
    ({"gaussian": {"distribution": "cauchy"}}, "'normal' or 'uniform'"),
    ({"loop": {"real_fraction": 1.5}}, "loop.real_fraction = 1.5"),
    ({"loop": {"real_fraction": -0.1}}, "loop.real_fraction = -0.1"),
    ({"loop": {"sampling_bias": 0.0}}, "loop.sampling_bias = 0.0"),
    ({"loop": {"sampling_bias": 1.2}}, "loop.sampling_bias = 1.2"),
    ({"loop": {"mode": "circular"}}, "'replace', 'accumulate', 'accumulate_subsample', 'augment' or 'fresh'"),
    ({"loop": {"real_points": -1}}, "loop.real_points = -1"),
    ({"loop": {"real_points": 2.5}}, "loop.real_points = 2.5"),
    ({"loop": {"curation": {"kind": "oracle"}}}, "loop.curation.kind = 'oracle' is invalid: Input should be 'none', "
                                                 "'verifier' or 'top_k'"),
    ({"loop": {"curation": {"kind": "verifier", "threshold": 1.5}}}, "loop.curation.threshold = 1.5"),
    ({"loop": {"curation": {"kind": "verifier", "threshold": -0.1}}}, "loop.curation.threshold = -0.1"),
    ({"loop": {"curation": {"kind": "top_k", "keep": 0.0}}}, "loop.curation.keep = 0.0"),
    ({"loop": {"curation": {"kind": "verifier", "bias": 0.5}}}, "bias > 0 needs favour"),
    ({"seed": "zero"}, "seed = 'zero'"),
    ({"seed": -1}, "seed = -1"),
    ({"gaussian": {"n_sample": 10}}, "did you mean 'n_samples'"),
    ({"loop": {"mode": True}}, "loop.mode = True"),
    ({"methods": ["mle", "hyper_mle"], "gaussian": {"methods": None}}, "the gaussian study has no hyper_mle"),
    ({"gmm": {"grid": {"weight": [], "n_samples": [50]}}}, "gmm.grid.weight = []"),
    ({"gmm": {"grid": {"weight": [0.8, 1.0], "n_samples": [50]}}}, "strictly between 0 and 1"),
    ({"gmm": {"grid": {"weight": [0.8], "n_samples": [3]}}}, "at least 4"),
    ({"gmm": {"stds": [[1.0], [0.0]]}}, "gmm: every standard deviation must be positive"),
    ({"gmm": {"means": [[0.0], [2.0, 1.0]]}}, "must both be 2 x 1"),
    ({"gmm": {"weights": [1.0, 2.0]}}, "needs 1 positive entries"),
    ({"gmm": {"ple": {"lam": 0.0, "steps": 10, "lr": 0.01, "batch_fraction": 0.5}}}, "gmm.ple.lam = 0.0"),
    ({"gmm": {"ple": {"lam": 0.1, "steps": 10, "lr": 0.01, "batch_fraction": 0.0}}}, "gmm.ple.batch_fraction"),
    ({"gmm": {"lambda_sweep": {"lams": [0.1, 0.0], "weight": 0.9, "n_samples": 20}}}, "every lambda must be > 0"),
    ({"gmm": {"lambda_sweep": {"lams": [], "weight": 0.9, "n_samples": 20}}}, "gmm.lambda_sweep.lams = []"),
    ({"gmm": {"hyper": {"head": "chunked"}}}, "gmm.hyper.head = 'chunked' is invalid: Input should be 'lowrank' or "
                                                "'linear'"),
    ({"gmm": {"hyper": {"rank": 0}}}, "gmm.hyper.rank = 0"),
    ({"gmm": {"ple": {"penalty": "max"}}}, "gmm.ple.penalty = 'max'"),
    ({"gmm": {"ple": {"form": "anchor"}}}, "gmm.ple.form = 'anchor'"),
    ({"gmm": {"ple": {"training": "halfs"}}}, "gmm.ple.training = 'halfs'"),
    ({"gmm": {"ple": {"concentration": 0.0}}}, "gmm.ple.concentration = 0.0"),
    ({"digits_gan": {"preset": "huge"}}, "preset 'huge' is not one of the gan presets: small, mnist, cifar10"),
    ({"digits_gan": {"gan": {"loss": "wasserstein"}}}, "digits_gan.gan.loss = 'wasserstein'"),
    ({"digits_gan": {"ple": {"steps": 0}}}, "digits_gan.ple.steps = 0"),
    ({"digits_diffusion": {"diffusion": {"schedule": "quadratic"}}},
     "digits_diffusion.diffusion.schedule = 'quadratic'"),
    ({"digits_diffusion": {"diffusion": {"timesteps": 50, "sampling_steps": 80}}},
     "sampling_steps (80) must be at most timesteps (50)"),
    ({"digits_diffusion": {"diffusion": {"timesteps": 1}}}, "digits_diffusion.diffusion.timesteps = 1"),
    # numbers that are not finite, anywhere
    ({"gmm": {"stds": [[float("nan")], [1.0]]}}, "gmm.stds = nan is invalid: Input should be a finite number"),
    ({"gmm": {"means": [[0.0], [float("inf")]]}}, "gmm.means = inf is invalid"),
    ({"gmm": {"weights": [float("-inf")]}}, "gmm.weights = -inf is invalid"),
    ({"gmm": {"ple": {"lr": float("inf")}}}, "gmm.ple.lr = inf is invalid: Input should be a finite number"),
    ({"loop": {"real_fraction": float("nan")}}, "loop.real_fraction = nan is invalid"),
    # a typo is named before the key it leaves missing
    ({"sed": 0}, "unknown key 'sed'; did you mean 'seed'?"),
    # runaway runs
    ({"gaussian": {"generations": 100_000_000}}, "gaussian.generations = 100000000 is above max_generations = 1000"),
    ({"max_generations": 50, "grid": {"generations": 51}}, "grid.generations = 51 is above max_generations = 50"),
]


def _remove_key(path: Path, section: str, key: str) -> None:
    params = yaml.safe_load(path.read_text())
    del params[section][key]
    path.write_text(yaml.safe_dump(params))


@pytest.mark.parametrize("override,expected", BAD, ids=[str(o) for o, _ in BAD])
def test_bad_value_stops_with_one_clear_line(tmp_path, monkeypatch, capsys, override, expected):
    path = write_params(tmp_path / "in", **override)
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    assert main(study_flow, ["gaussian"], ["gaussian", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {path}:")
    assert expected in err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_missing_key_is_named(tmp_path):
    path = write_params(tmp_path)
    _remove_key(path, "gaussian", "seeds")
    with pytest.raises(ParamsError, match="key 'gaussian.seeds' is missing"):
        load_params(path)


def test_a_misspelt_key_is_named_before_the_key_it_leaves_missing(tmp_path):
    path = write_params(tmp_path, gaussian={"n_sample": 10})
    _remove_key(path, "gaussian", "n_samples")
    with pytest.raises(ParamsError, match=r"unknown key 'gaussian.n_sample'; did you mean 'n_samples'\? .* \(and 1 more "
                                          r"problem\(s\)\)$"):
        load_params(path)


def test_missing_section_is_named(tmp_path):
    path = write_params(tmp_path)
    params = yaml.safe_load(path.read_text())
    del params["grid"]
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match="key 'grid' is missing"):
        load_params(path)


def test_left_out_keys_take_the_schema_defaults(tmp_path):
    path = write_params(tmp_path)
    params = yaml.safe_load(path.read_text())
    del params["loop"], params["digits"]["ple"]["lr"], params["gmm"]["stds"]
    path.write_text(yaml.safe_dump(params))
    loaded = load_params(path)
    assert loaded.loop.mode == "replace" and loaded.loop.sampling_bias == 1.0 and loaded.loop.real_fraction == 0.5
    assert loaded.digits.ple.lr == 0.01 and loaded.digits.ple.steps == 1000  # the default, the file's own value
    assert loaded.gmm.stds == [[1.0], [1.0]] and loaded.gmm.kl_samples == 20000 and loaded.gmm.hyper.head == "lowrank"


def test_overlay_changes_only_what_it_names(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"gmm": {"seeds": 7, "ple": {"steps": 11}}, "loop": {"mode": "fresh"}}))
    base, merged = load_params(ROOT / "params.yaml"), load_params(ROOT / "params.yaml", overlay)
    assert (merged.gmm.seeds, merged.gmm.ple.steps, merged.loop.mode) == (7, 11, "fresh")
    assert merged.gmm.ple.lam == base.gmm.ple.lam and merged.gmm.grid == base.gmm.grid
    assert merged.loop.sampling_bias == base.loop.sampling_bias and merged.digits == base.digits


def test_overlay_command_writes_the_merged_file_or_one_line(tmp_path):
    out = tmp_path / "params.yaml"
    cmd = [sys.executable, "-m", "tasks.studies", "overlay", str(ROOT / "params.yaml"), str(ROOT / "params.paper.yaml"),
           "--out", str(out)]
    assert subprocess.run(cmd, cwd=ROOT, capture_output=True).returncode == 0
    assert load_params(out) == load_params(ROOT / "params.yaml", ROOT / "params.paper.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"gmm": {"seeds": 0}}))
    result = subprocess.run([*cmd[:5], str(bad), "--out", str(tmp_path / "merged.yaml")], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "gmm.seeds = 0" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "merged.yaml").exists()


@pytest.mark.parametrize("text,expected", [
    (b"seed: [unclosed\n", "not valid YAML at line 2; fix the syntax"),
    (b"- a list\n", "expected a mapping"),
    (b"seed: 0\nseed: 1\n", "key 'seed' appears twice in one mapping (line 2); keep one of them"),
    (b"loop:\n  mode: replace\n  mode: fresh\n", "key 'mode' appears twice in one mapping (line 3)"),
    ("seed: 0  # café\n".encode("utf-16"), "not UTF-8 text (byte 0"),
    ("seed: 0  # café\n".encode("latin-1"), "not UTF-8 text (byte 14"),
    (Path(sys.executable).read_bytes()[:4096], "not UTF-8 text"),
])
def test_unreadable_file(tmp_path, text, expected):
    """Files that are not UTF-8 YAML mappings with unique keys: one line naming the file."""
    path = tmp_path / "params.yaml"
    path.write_bytes(text)
    with pytest.raises(ParamsError, match=f"^{path}: " + re.escape(expected)):
        load_params(path)


def test_a_directory_is_not_a_params_file(tmp_path):
    with pytest.raises(ParamsError, match=f"^{tmp_path}: is a directory; pass the path of a params file$"):
        load_params(tmp_path)


def test_max_generations_lets_a_longer_study_through(tmp_path):
    """The ceiling is a default: raising it admits the study it refused."""
    params = load_params(write_params(tmp_path, max_generations=2000, gaussian={"generations": 1500}))
    assert params.gaussian.generations == 1500


@pytest.mark.parametrize("section", [{"seeds": 10_000_000_000}, {"n_samples": 10_000_000_000}])
def test_a_study_larger_than_memory_stops_before_it_starts(tmp_path, monkeypatch, capsys, section):
    """seeds x n_samples beyond the memory available: one line with the estimate and the limit."""
    path = write_params(tmp_path / "in", gaussian=section)
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    assert main(study_flow, ["gaussian"], ["gaussian", str(path)], preflight=preflight) == 2
    err = capsys.readouterr().err
    available = psutil.virtual_memory().available / 1e9
    need = 16 * 10_000_000_000 * (100 if "n_samples" in section else 10) / 1e9  # 4 float32 copies of S x n values
    assert err.count("\n") == 1 and err.startswith("error: gaussian: "), err
    assert f"need about {need:.3g} GB for the datasets alone (replace mode)" in err
    assert re.search(r"more than the ([0-9.]+) GB of memory available; lower gaussian.seeds or n_samples", err)
    assert abs(float(re.search(r"the ([0-9.]+) GB", err)[1]) - available) < 0.1 * available
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("study,loop,expected", [
    ("gaussian", {"mode": "augment", "real_points": 11}, "loop.real_points = 11 is more than the 10 points of D_0 that "
     "augment draws its real points from (gaussian.n_samples); lower it, or use loop.mode = fresh for new real draws"),
    ("gmm", {"curation": {"kind": "verifier", "favour": "7", "bias": 0.5}},
     "loop.curation.favour = '7' is not a group of the gmm study's verifier; choose one of 1, 2"),
])
def test_loop_settings_a_study_cannot_honour_stop_before_it_starts(tmp_path, monkeypatch, capsys, study, loop,
                                                                   expected):
    path = write_params(tmp_path / "in", loop=loop, gaussian={"n_samples": 10})
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    assert main(study_flow, [study], [study, str(path)], preflight=preflight) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err == f"error: {expected}\n", err
    assert sorted(tmp_path.rglob("*")) == before


def test_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "nope.yaml")


@pytest.mark.parametrize("overlay", [None, "params.paper.yaml"])
def test_shipped_params_are_valid_and_flatten(overlay):
    params = load_params(ROOT / "params.yaml", overlay and ROOT / overlay)
    flat = flatten(params)
    assert flat["loop.mode"] == params.loop.mode
    assert flat["gaussian.n_samples"] == params.gaussian.n_samples
    assert flat["methods"] == ",".join(params.methods)


def test_command_line_exit_code_and_stderr(tmp_path):
    """The real process: non-zero exit, a single line on stderr, no output folders."""
    path = write_params(tmp_path, loop={"mode": "circular"})
    result = subprocess.run([sys.executable, "-m", "flows.study", "gaussian", str(path)], cwd=tmp_path,
                            env={**subprocess_env(), "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "loop.mode = 'circular'" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.parametrize("variable, value, named", [
    ("MLFLOW_TRACKING_URI", "http://127.0.0.1:{port}", "MLflow tracking server"),
    ("PREFECT_API_URL", "http://127.0.0.1:{port}/api", "Prefect API"),
])
def test_unreachable_servers_stop_within_seconds(tmp_path, variable, value, named):
    """A closed port: one line naming the server and its URI, exit 2, nothing written, no waiting."""
    with socket.socket() as probe:  # a port that was free a moment ago; nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = value.format(port=port)
    path = write_params(tmp_path)
    env = {**subprocess_env(), "PYTHONPATH": str(ROOT), variable: url}
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "flows.study", "gaussian", str(path)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert result.returncode == 2 and named in result.stderr and url in result.stderr, result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert elapsed < 30  # interpreter start-up and imports included; the check itself takes milliseconds
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_the_memory_estimate_counts_four_float32_datasets_and_accumulation(tmp_path):
    """seeds x points x values per point x 4 bytes x 4 datasets; D_g holds every generation's points when it
    accumulates. Checked on a scalar study and on an image study (8 x 8 digits)."""
    params = load_params(write_params(tmp_path, gaussian={"seeds": 7, "n_samples": 11, "generations": 3}))
    (gaussian,) = spec("gaussian").studies(params, ROOT)
    def loop(mode, **more):
        return LoopParams(mode=mode, **more)

    assert dataset_bytes(gaussian, loop("replace")) == 16 * 7 * 11 == dataset_bytes(gaussian, loop("fresh"))
    assert dataset_bytes(gaussian, loop("fresh", real_points=4)) == 16 * 7 * (4 + 11)  # real points beside n
    assert dataset_bytes(gaussian, loop("replace", real_points=4)) == 16 * 7 * 11  # no real part to add them to
    assert dataset_bytes(gaussian, loop("accumulate")) == 16 * 7 * 11 * 3
    assert dataset_bytes(gaussian, loop("accumulate_subsample")) == 16 * 7 * 11 * 3  # the pool is stored
    images = load_images("digits", ROOT / "data/raw")  # the study itself needs the classifier, a DVC output
    digits = ImageStudy(params.digits, "digits", images, images, None, "", None, torch.device("cpu"))
    assert dataset_bytes(digits, loop("replace")) == 16 * params.digits.seeds * params.digits.n_samples * 64

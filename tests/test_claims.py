"""The claims report: the verdict rule, the rows read from the studies' summaries, the command line and its stage."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.outputs.claims import CLAIMS, Claim, Term, corner, difference, evaluate, main, plus_minus, rows, verdict
from tasks.studies import load_params, spec

from conftest import ROOT, subprocess_env, write_params

GMM_POINTS = ["weight=0.8,n_samples=50", "weight=0.8,n_samples=200", "weight=0.95,n_samples=50",
              "weight=0.95,n_samples=200"]
CORNER = "weight=0.95,n_samples=50"


def stats(**metrics: tuple[float, float] | bool) -> dict[str, float | bool]:
    """Seed statistics as in summary.json: metric=(mean, se); a flag (degenerate=False) as it is."""
    out: dict[str, float | bool] = {}
    for name, value in metrics.items():
        if isinstance(value, bool):
            out[name] = value
        else:
            out |= {f"{name}_mean": value[0], f"{name}_se": value[1], f"{name}_median": value[0]}
    return out


def summaries() -> dict[str, dict]:
    """One summary per study: gmm supported only at its corner, grid contradicted, gaussian not shown,
    digits degenerate, fairness supported."""
    response = {"response": (0.9, 0.05), "degenerate": False}
    return {
        "gaussian": {"generation": 9, "mle": stats(sigma_hat=(1.05, 0.05)), "ple": stats(sigma_hat=(1.0, 0.05))},
        "gmm": {"generation": 4,
                "mle": {p: stats(kl=(0.5, 0.01)) for p in GMM_POINTS},
                "ple": {p: stats(kl=(0.2 if p == CORNER else 0.9, 0.01), **response) for p in GMM_POINTS},
                "hyper_mle": {p: stats(kl=(0.6, 0.01), response=(0.8, 0.1)) for p in GMM_POINTS}},
        "grid": {"generation": 4,
                 "mle": {"distribution=normal": stats(sigma_bias=(-0.1, 0.01)),
                         "distribution=uniform": stats(sigma_bias=(-0.9, 0.01))},
                 "ple": {"distribution=normal": stats(sigma_bias=(-0.5, 0.01), **response),
                         "distribution=uniform": stats(sigma_bias=(0.0, 0.01), **response)},
                 "hyper_mle": {"distribution=normal": stats(sigma_bias=(-0.5, 0.01), **response)}},
        "digits": {"generation": 4, "mle": stats(minority_ratio=(0.1, 0.01)),
                   "ple": stats(minority_ratio=(0.8, 0.01), response=(0.1, 0.02)),
                   "hyper_mle": stats(minority_ratio=(0.2, 0.01), response=(0.5, 0.1))},
        "fairness": {"generation": 4, "mle": stats(eo_selective=(0.1, 0.03), eo_finetune=(0.3, 0.04))},
    }


def project(folder: Path, **changes: dict | None) -> Path:
    """folder with params.yaml (gmm.ple.lam = 0.5) and the summaries, `changes` replacing some (None: absent)."""
    write_params(folder, gmm={"ple": {"lam": 0.5}})
    for study, summary in {**summaries(), **changes}.items():
        if summary is not None:
            path = folder / "metrics" / study / "summary.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(summary))
    return folder / "params.yaml"


@pytest.mark.parametrize("effect, se, direction, responses, expected", [
    (None, None, "positive", {}, "pending"),
    (0.5, None, "positive", {}, "pending"),
    (None, None, "positive", {"ple": None}, "pending"),
    (0.5, 0.1, "positive", {}, "supported"),
    (-0.5, 0.1, "negative", {}, "supported"),
    (-0.5, 0.1, "positive", {}, "contradicted"),
    (0.5, 0.1, "negative", {}, "contradicted"),
    (0.1, 0.1, "positive", {}, "not shown"),
    (0.2, 0.1, "positive", {}, "not shown"),      # exactly 2 SE: not beyond
    (-0.2, 0.1, "positive", {}, "not shown"),
    (0.2001, 0.1, "positive", {}, "supported"),
    (-0.2001, 0.1, "positive", {}, "contradicted"),
    (0.0, 0.0, "positive", {}, "not shown"),
    (0.5, 0.1, "positive", {"ple": 0.9}, "supported"),
    (0.5, 0.1, "positive", {"ple": 0.2}, "supported"),   # at the threshold: not degenerate
    (0.5, 0.1, "positive", {"ple": 0.19}, "invalid (degenerate H)"),
    (0.5, 0.1, "positive", {"ple": 0.19, "hyper_mle": None}, "invalid (degenerate H)"),
    (0.5, 0.1, "positive", {"ple": None}, "invalid (response not measured)"),
    (0.0, 0.1, "positive", {"ple": None}, "invalid (response not measured)"),
])
def test_verdict_rule(effect, se, direction, responses, expected):
    assert verdict(effect, se, direction, responses) == expected


def test_value_is_the_difference_with_the_se_of_independent_means():
    claim = Claim("c", "claim", "s", Term("ple", "m"), Term("mle", "m"), "positive")
    row = evaluate(claim, {"generation": 0, "ple": stats(m=(0.5, 0.03)), "mle": stats(m=(0.2, 0.04))}, None)
    assert row["effect"] == pytest.approx(0.3) and row["se"] == pytest.approx(0.05)
    assert row["value"] == "0.300 ± 0.050" and row["verdict"] == "supported"


def test_plus_minus_rounds_the_se_to_two_digits_and_the_mean_alike():
    assert plus_minus(-0.03114, 0.01208) == "-0.031 ± 0.012"
    assert plus_minus(23.72, 4.13) == "23.7 ± 4.1" and plus_minus(237.2, 41.3) == "237 ± 41"
    assert plus_minus(0.85, None) == "0.85"


def test_corner_is_the_largest_weight_then_the_smallest_sample():
    assert corner(GMM_POINTS) == CORNER
    assert corner(["weight=0.8,n_samples=10", "weight=0.9,n_samples=200", "weight=0.9,n_samples=100"]) \
        == "weight=0.9,n_samples=100"
    assert corner(["distribution=normal"]) is None


def test_only_the_hypernetwork_methods_a_row_compares_are_judged():
    summary = summaries()["gmm"]
    summary["hyper_mle"] = {p: stats(kl=(0.6, 0.01), response=(0.01, 0.01)) for p in GMM_POINTS}
    row = evaluate(next(c for c in CLAIMS if c.key == "gmm_kl"), summary, None)
    assert row["verdict"] == "supported" and row["response"] == "ple 0.900 ± 0.050; hyper_mle 0.010 ± 0.010"


def test_cli_writes_the_report_from_the_summaries(tmp_path):
    params = project(tmp_path)
    result = subprocess.run([sys.executable, "-m", "tasks.outputs.claims", params.name], cwd=tmp_path,
                            env={**subprocess_env(), "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    table = json.loads((tmp_path / "metrics/claims.json").read_text())
    assert list(table) == [c.key for c in CLAIMS]
    assert {k: r["verdict"] for k, r in table.items()} == {
        "gan_fid": "pending", "gmm_kl": "supported", "grid_collapse": "contradicted", "gaussian_sigma": "not shown",
        "digits_minority": "invalid (degenerate H)", "fairness_eo": "supported", "diffusion_fid": "pending"}
    gmm = table["gmm_kl"]
    assert gmm["study"] == "gmm" and gmm["value"] == "-0.300 ± 0.014"
    assert gmm["effect"] == pytest.approx(-0.3) and gmm["se"] == pytest.approx(math.hypot(0.01, 0.01))
    hyper = load_params(params).gmm.hyper
    assert gmm["setting"] == {"point": CORNER, "n": 50, "seeds": 16, "generations": 5, "generation": 4,
                              "lambda": 0.5, "head": hyper.head, "rank": hyper.rank, "penalty": "sum",
                              "form": "paper", "training": "reweighted"}
    assert gmm["response"] == "ple 0.900 ± 0.050; hyper_mle 0.80 ± 0.10"
    assert gmm["responses"]["ple"] == {"mean": 0.9, "se": 0.05}
    assert table["grid_collapse"]["setting"]["point"] == "distribution=normal"
    assert table["gaussian_sigma"]["response"] == "analytic (no hypernetwork)"
    assert table["gaussian_sigma"]["setting"] == {"n": 10, "seeds": 100, "generations": 50, "generation": 9}
    assert table["fairness_eo"]["response"] == "n/a" and table["fairness_eo"]["value"] == "-0.200 ± 0.050"
    assert table["gan_fid"]["value"] == "—" and table["gan_fid"]["study"] == "digits_gan"  # no summary yet
    md = (tmp_path / "metrics/claims.md").read_text()
    lines = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines() if line.startswith("| ")}
    for row in table.values():
        assert lines[row["claim"]].endswith(f"| {row['verdict']} |")
        assert f"| {row['value']} |" in lines[row["claim"]]
    assert "not shown: |effect| <= 2 SE" in md and "mean response below 0.2" in md


def test_a_missing_summary_or_entry_leaves_its_rows_pending_or_unmeasured(tmp_path):
    digits = summaries()["digits"]
    del digits["ple"]["response_mean"], digits["ple"]["response_se"]
    gaussian = summaries()["gaussian"]
    del gaussian["mle"]["sigma_hat_se"]
    params = project(tmp_path, grid=None, digits=digits, gaussian=gaussian)
    table = rows(params, tmp_path)
    assert table["grid_collapse"]["verdict"] == "pending" and table["grid_collapse"]["value"] == "—"
    assert "generation" not in table["grid_collapse"]["setting"]
    assert table["grid_collapse"]["response"] == "ple not measured; hyper_mle not measured"
    assert table["gaussian_sigma"]["verdict"] == "pending"
    assert table["digits_minority"]["verdict"] == "invalid (response not measured)"
    assert table["gmm_kl"]["verdict"] == "supported"


@pytest.mark.parametrize("content, problem", [
    ('{"generation": 4, "mle": {', "not valid JSON"),
    ("[1, 2]", "not a summary"),
    ('{"generation": 4, "mle": {"kl_mean": "low"}}', "not a summary"),
    ("\udcff", "not valid JSON"),
    (None, "cannot be read"),
])
def test_a_corrupt_summary_stops_with_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, content, problem):
    params = project(tmp_path)
    path = tmp_path / "metrics/gmm/summary.json"
    if content is None:  # a folder in its place
        path.unlink()
        path.mkdir()
    else:
        path.write_text(content, errors="surrogateescape")
    monkeypatch.chdir(tmp_path)
    assert main([params.name]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: metrics/gmm/summary.json: {problem}") and err.count("\n") == 1
    assert not list((tmp_path / "metrics").glob("claims*")) and not list((tmp_path / "metrics").glob(".claims*"))


def test_the_stage_reads_what_the_claims_read():
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    stage = pipeline["stages"]["claims"]
    studies = {c.study for c in CLAIMS if c.study}
    assert stage["cmd"] == "python -m tasks.outputs.claims params.yaml"
    assert {f"metrics/{s}/summary.json" for s in studies} | {"tasks/outputs/claims.py"} <= set(stage["deps"])
    assert {spec(s).section for s in studies} <= set(stage["params"])
    assert [{"metrics/claims.md": {"cache": False}}] == stage["outs"]
    assert [{"metrics/claims.json": {"cache": False}}] == stage["metrics"]
    assert "metrics/claims.json" in pipeline["metrics"]


def test_a_target_turns_a_term_into_its_distance_from_the_target():
    """minority_ratio is fair at 1: 5.8 (over-represented) is farther from fair than 0.14."""
    summary = {"generation": 4, "ple": {"minority_ratio_mean": 5.84, "minority_ratio_se": 0.8},
               "mle": {"minority_ratio_mean": 0.14, "minority_ratio_se": 0.14}}
    ple, mle = Term("ple", "minority_ratio", 1.0).of(summary, None), Term("mle", "minority_ratio", 1.0).of(summary, None)
    assert ple == pytest.approx((4.84, 0.8)) and mle == pytest.approx((0.86, 0.14))
    effect, se = difference(ple, mle)
    assert verdict(effect, se, "negative", {"ple": 0.5}) == "contradicted"


def test_a_response_relative_to_an_unidentified_mle_slope_is_invalid():
    """When MLE's own probe slope is within 2 SE of 0 the relative response means nothing."""
    assert verdict(-1.0, 0.1, "negative", {"ple": 0.5}, identified=False) == "invalid (response not identified)"
    claim = next(c for c in CLAIMS if c.key == "gmm_kl")
    point = "weight=0.95,n_samples=50"
    entry = {"kl_mean": 0.1, "kl_se": 0.01, "response_mean": 0.5, "response_se": 0.1,
             "response_slope_mle_mean": 0.31, "response_slope_mle_se": 0.31}
    summary = {"generation": 4, "mle": {point: {"kl_mean": 0.5, "kl_se": 0.01}}, "ple": {point: entry},
               "hyper_mle": {point: entry}}
    assert evaluate(claim, summary, None)["verdict"] == "invalid (response not identified)"
    identified = {**entry, "response_slope_mle_se": 0.1}
    summary = {**summary, "ple": {point: identified}, "hyper_mle": {point: identified}}
    assert evaluate(claim, summary, None)["verdict"] == "supported"


def test_a_response_absent_because_mle_identifies_nothing_is_shown_as_not_identified():
    """The summaries of an unidentified point carry MLE's slope but no response (tasks/response.py)."""
    claim = next(c for c in CLAIMS if c.key == "gmm_kl")
    point = "weight=0.95,n_samples=50"
    entry = {"kl_mean": 0.1, "kl_se": 0.01, "response_slope_mle_mean": 0.31, "response_slope_mle_se": 0.31}
    summary = {"generation": 4, "mle": {point: {"kl_mean": 0.5, "kl_se": 0.01}}, "ple": {point: entry},
               "hyper_mle": {point: entry}}
    row = evaluate(claim, summary, None)
    assert row["response"].startswith("ple not identified; hyper_mle not identified")
    assert row["verdict"] == "invalid (response not identified)"

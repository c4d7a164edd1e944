"""docs/extending.md, followed literally: its blocks add the `points` study to a copy of the repository
and `dvc repro points` runs it, with every method, through every generation."""

from __future__ import annotations

import json
import re
import subprocess

import pandas as pd
import pytest

from conftest import ROOT, colour, figure_pixels, run, subprocess_env

BLOCK = re.compile(r"^```(\w+) (file=\S+|append=\S+|patch=\S+|run)\n(.*?)^```$", re.M | re.S)


def guide_steps() -> list[tuple[str, str]]:
    """(action, text) of every marked block of the guide, in order."""
    return [(action, text) for _, action, text in BLOCK.findall((ROOT / "docs/extending.md").read_text())]


def test_the_guide_has_every_kind_of_step():
    actions = [action.split("=")[0] for action, _ in guide_steps()]
    assert actions.count("file") == 2 and actions.count("patch") == 1 and actions.count("append") == 2
    assert [text.strip() for action, text in guide_steps() if action == "run"][-1] == "dvc repro points"


@pytest.mark.slow
def test_following_the_guide_adds_a_study_that_dvc_runs(project_copy, prefect_api):
    repo, env = project_copy, subprocess_env(prefect_api)
    for action, text in guide_steps():
        kind, _, target = action.partition("=")
        if kind == "file":
            (repo / target).parent.mkdir(parents=True, exist_ok=True)
            (repo / target).write_text(text)
        elif kind == "append":
            with open(repo / target, "a") as handle:
                handle.write(text)
        elif kind == "patch":
            subprocess.run(["git", "apply", "-"], input=text, text=True, cwd=repo, env=env, check=True)
        else:
            run(["bash", "-c", text], repo, env)

    summary = json.loads((repo / "metrics/points/summary.json").read_text())
    assert summary["generation"] == 2 and set(summary) == {"generation", "mle", "hyper_mle", "ple"}
    assert {"response_mean", "degenerate"} <= set(summary["ple"]) and "response_mean" not in summary["mle"]
    # generation 0 of mle is the sample mean and std of 50 draws from the file (N(2, 0.5^2)): within 5 SE
    tidy = pd.read_csv(repo / "metrics/points/per_generation.csv")
    first = tidy[(tidy.method == "mle") & (tidy.generation == 0)].pivot(index="seed", columns="metric", values="value")
    assert len(first) == 4 and (first.mu_hat - 2.0).abs().max() < 5 * 0.5 / 50**0.5
    assert ((first.sigma_ratio - 1.0).abs() < 5 / (2 * 50) ** 0.5).all()
    assert colour(figure_pixels(repo / "figures/points/curves.png", (5.2 * 2, 4))) > 0.005  # mu_hat, sigma_ratio
    status = run(["dvc", "status", "points"], repo, env).stdout
    assert "changed" not in status  # the stage and its outputs are recorded

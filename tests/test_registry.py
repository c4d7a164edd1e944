"""The registry of studies is the one list: dvc.yaml, the Makefile, params, serve, sweeps and reports agree with it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tasks.errors import ParamsError
from tasks.infra.sweep import SweepFile
from tasks.studies import STUDIES, Params, load_params, spec

from conftest import ROOT


REPORT_STAGES = {"claims"}  # read the studies' outputs, run no study


def test_dvc_stages_are_the_registry_its_reference_classifiers_and_the_reports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    expected = {s.name for s in STUDIES} | {f"classifier_{s.name}" for s in STUDIES if s.reference_classifier}
    assert set(stages) == expected | REPORT_STAGES
    for study in STUDIES:
        stage = stages[study.name]
        assert stage["cmd"] == f"python -m flows.study {study.name} params.yaml"
        assert study.section in stage["params"]  # the stage reruns when its section changes
        assert any(dep.startswith(f"tasks/studies/{study.section}") or dep.startswith("tasks/studies/images")
                   for dep in stage["deps"])
        outs = {next(iter(o)) if isinstance(o, dict) else o for o in stage["outs"]}
        assert f"data/generations/{study.name}" in outs and f"figures/{study.name}" in outs


def test_stages_do_not_depend_on_other_studies_or_on_reports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for study in STUDIES:
        deps = stages[study.name]["deps"]
        others = {s.section for s in STUDIES} - {study.section, "digits", "mnist", "cifar10"}
        assert not [d for d in deps if any(d.startswith(f"tasks/studies/{o}") for o in others)], study.name
        assert "tasks" not in deps and "models" not in deps and "tasks/outputs/reports.py" not in deps


def test_make_run_lists_the_registry_defaults():
    listed = subprocess.run([sys.executable, "-m", "tasks.studies", "list"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split()
    assert listed == [s.name for s in STUDIES if s.default(ROOT)]
    assert {"gaussian", "gmm", "gmm_lambda", "grid", "digits", "fairness"} <= set(listed)


def test_params_has_a_section_per_study_and_only_those():
    sections = {s.section for s in STUDIES}
    assert set(Params.model_fields) == sections | {"seed", "methods", "loop"}
    params = load_params(ROOT / "params.yaml")
    for study in STUDIES:
        section = getattr(params, study.section)
        assert section is not None or not study.required


def test_unknown_study_is_one_line_naming_the_known_ones():
    with pytest.raises(ParamsError, match="unknown study 'gausian'; choose one of gaussian, gmm"):
        spec("gausian")


def test_sweeps_accept_exactly_the_sweepable_studies():
    for study in STUDIES:
        raw = {"study": study.name, "grid": {"seed": [0]}}
        if study.sweepable:
            assert SweepFile.model_validate(raw).study == study.name
        else:
            with pytest.raises(ValueError, match="choose one of"):
                SweepFile.model_validate(raw)


def test_params_doc_lists_every_key_of_the_schema():
    generated = subprocess.run([sys.executable, "-m", "tasks.studies", "schema"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout
    assert (ROOT / "docs/params.md").read_text().endswith(generated)
    assert "| `gmm.ple.lam` | float | `0.1` |" in generated and "| `gmm.grid.weight` |" in generated


def test_every_params_key_a_stage_names_is_written_in_params_yaml():
    """DVC reads stage params from the file itself, so schema defaults do not count there."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        for key in stage.get("params", []):
            value = raw
            for part in key.split("."):
                assert isinstance(value, dict) and part in value, f"stage {name}: {key} is not in params.yaml"
                value = value[part]

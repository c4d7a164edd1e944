"""The registry of studies is the one list: dvc.yaml, the Makefile, params, serve, sweeps and reports agree with it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.errors import ParamsError
from tasks.infra.sweep import SweepFile
from tasks.studies import STUDIES, Params, load_params, spec

from conftest import ROOT


REPORT_STAGES = {"claims"}  # read the studies' outputs, run no study


def test_dvc_stages_are_the_registry_its_reference_classifiers_and_the_reports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    expected = {s.name for s in STUDIES} | {f"classifier_{s.name}" for s in STUDIES if s.owns_classifier}
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


def _local_imports(path: Path, skip: set[str]) -> set[Path]:
    """Repository files `path` imports, transitively, not entering the modules in `skip`."""
    seen: set[Path] = set()
    todo = [path]
    while todo:
        file = todo.pop()
        if file in seen:
            continue
        seen.add(file)
        for node in ast.walk(ast.parse(file.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module, *(f"{node.module}.{a.name}" for a in node.names)] \
                if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            for name in names:
                if name.split(".")[0] not in ("flows", "tasks", "models") or name in skip \
                        or any(name.startswith(f"{s}.") for s in skip):
                    continue
                base = ROOT / name.replace(".", "/")
                todo += [f for f in (base.with_suffix(".py"), base / "__init__.py") if f.exists()]
    return seen


def _docstring_only(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def _study_module(study) -> str:
    """tasks.studies.<name>: the module or package that defines the study's params."""
    return ".".join(study.params.__module__.split(".")[:3])


def test_every_stage_depends_on_the_code_its_study_runs():
    """A change to any module a study imports (flows/study.py and the study's own package, followed
    through every repository import except the registry and the other studies) reruns its stage."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    gaps = {}
    for study in STUDIES:
        own = _study_module(study)
        skip = {"tasks.studies"} | {_study_module(s) for s in STUDIES} - {own}
        files = _local_imports(ROOT / "flows/study.py", skip) | _local_imports(
            ROOT / own.replace(".", "/") / "__init__.py" if (ROOT / own.replace(".", "/")).is_dir()
            else ROOT / f"{own.replace('.', '/')}.py", skip)
        deps = stages[study.name]["deps"]
        missing = sorted(str(f.relative_to(ROOT)) for f in files if not _docstring_only(f)
                         and not any(str(f.relative_to(ROOT)) == d or str(f.relative_to(ROOT)).startswith(f"{d}/")
                                    for d in deps))
        gaps[study.name] = missing
    assert not any(gaps.values()), f"dvc.yaml deps lack {gaps}"


def test_make_run_lists_the_registry_defaults():
    listed = subprocess.run([sys.executable, "-m", "tasks.studies", "list"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split()
    assert listed == [s.name for s in STUDIES if s.default(ROOT)]
    assert {"gaussian", "gmm", "gmm_lambda", "grid", "digits", "fairness"} <= set(listed)


def test_params_has_a_section_per_study_and_only_those():
    sections = {s.section for s in STUDIES}
    assert set(Params.model_fields) == sections | {"seed", "max_generations", "methods", "loop"}
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

"""Faults injected into a study's files and into the machine it runs on: each stops the run with one line saying
what is wrong, where and how to fix it, and that fix works. (Bad params: tests/test_params.py; servers that are
down or not the ones expected: tests/test_servers.py; a killed run's server and MLflow runs: tests/test_prefect_server.py
and tests/test_pipeline.py.)"""

from __future__ import annotations

import errno
import hashlib
import inspect
import json
import math
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from flows.cli import main
from flows.study import preflight, study_flow
from tasks.errors import DEBUG, CorruptDataError, report
from tasks.infra import resume, storage
from tasks.loop import Dataset

from conftest import ROOT, interruptible, run, subprocess_env, write_params

# ---------------------------------------------------------------------------------------------------------------------
# Integrity of stored generations (tasks.infra.storage, tasks.infra.resume): every record is sealed by the sha256 of
# its content, every dataset is checked against its record, its place in the chain and, at the resume point (the first
# generation without a record), against the sha256 of its content.

FINGERPRINT = "f" * 16
GENERATIONS = 4  # gen_000..gen_003 stored, records of 0..2: the run resumes at 3


def _toy(generation: int) -> Dataset:
    values = torch.arange(3 * 5 * 2, dtype=torch.float64).reshape(3, 5, 2) + 100 * generation
    return Dataset(values, torch.arange(5) < 2 - min(generation, 2))


def _write_generation(folder: Path, g: int, parent_md5: str, record: bool, **metadata: str) -> str:
    """D_g (and its record when `record`) as the loop writes them; the dataset's md5."""
    meta = {"experiment": "toy", "method": "mle", "generation": str(g), "fingerprint": FINGERPRINT,
            "parent_md5": parent_md5, **metadata}
    md5 = storage.write_dataset(storage.dataset_path(folder, g), _toy(g), meta)
    if record:
        storage.write_record(storage.record_path(folder, g), {
            "experiment": "toy", "method": "mle", "generation": g, "fingerprint": FINGERPRINT, "dataset_md5": md5,
            "metrics": {"sigma_hat": [1.0 + g, 0.5, 0.25], "ks": [0.1 * g, math.nan, 0.3]}})
    return md5


@pytest.fixture
def stored(tmp_path) -> tuple[Path, Path]:
    """(folder, output): a method's folder of GENERATIONS datasets and the records of all but the last, inside the DVC
    output data/generations/toy."""
    output = tmp_path / "data/generations/toy"
    folder = output / "mle"
    md5 = ""
    for g in range(GENERATIONS):
        md5 = _write_generation(folder, g, md5, record=g < GENERATIONS - 1)
    return folder, output


def _resume(folder: Path, output: Path) -> tuple[list[dict], Dataset, str]:
    records = resume.completed_records(folder, output, print, FINGERPRINT, GENERATIONS)
    return (records, *resume.resume_dataset(folder, output, FINGERPRINT, records))


def _edit_json(path: Path, edit: Callable[[dict], object]) -> None:
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))


def _edit_metric(path: Path) -> None:
    _edit_json(path, lambda record: record["metrics"]["sigma_hat"].__setitem__(0, 9.0))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _copy(folder: Path, source: str, target: str) -> None:
    shutil.copy(folder / source, folder / target)


def _rewrite(folder: Path, g: int, **metadata: str) -> None:
    """D_g written again with other metadata and, when g has a record, a record of its new md5, both well formed."""
    parent = storage.read_metadata(storage.dataset_path(folder, g))["parent_md5"]
    _write_generation(folder, g, metadata.pop("parent_md5", parent), storage.record_path(folder, g).exists(),
                      **metadata)


def _edit_values(folder: Path, g: int) -> None:
    """D_g with one value changed and its schema metadata, content sha256 included, kept."""
    path = storage.dataset_path(folder, g)
    table = pq.read_table(path)
    x = table.column("x").to_pylist()
    x[7][1] += 1.0
    pq.write_table(table.set_column(table.schema.get_field_index("x"), "x", pa.array(x, table.schema.field("x").type)),
                   path)


def _replace_pair(folder: Path, g: int) -> None:
    """gen_<g>.parquet and gen_<g>.json replaced by copies of generation g+1's."""
    for suffix in ("parquet", "json"):
        _copy(folder, f"gen_{g + 1:03d}.{suffix}", f"gen_{g:03d}.{suffix}")


CORRUPTIONS = {  # name: (corrupt(folder), the file named, what the message says is wrong)
    "truncated record": (lambda f: _truncate(f / "gen_001.json"), "gen_001.json", "is not valid JSON"),
    "record lacking a key": (lambda f: _edit_json(f / "gen_001.json", lambda r: r.pop("dataset_md5")),
                             "gen_001.json", "is not a whole record (no dataset_md5)"),
    "record not an object": (lambda f: (f / "gen_001.json").write_text("[]"), "gen_001.json", "is not a whole record"),
    "edited metric": (lambda f: _edit_metric(f / "gen_001.json"), "gen_001.json",
                      "was edited (its content does not match its recorded sha256)"),
    "edited dataset md5 in its record": (
        lambda f: _edit_json(f / "gen_001.json", lambda r: r.update(dataset_md5=storage.md5(f / "gen_002.parquet"))),
        "gen_001.json", "was edited"),
    "record replaced by the next one": (lambda f: _copy(f, "gen_002.json", "gen_001.json"), "gen_001.json",
                                        "is the record of generation 2, not 1"),
    "pair replaced by the next one": (lambda f: _replace_pair(f, 1), "gen_001.json",
                                      "is the record of generation 2, not 1"),
    "recorded dataset replaced by the next one": (
        lambda f: _copy(f, "gen_003.parquet", "gen_002.parquet"), "gen_002.parquet", "does not match its recorded md5"),
    "recorded dataset of another lineage": (lambda f: _rewrite(f, 2, parent_md5="0" * 32), "gen_002.parquet",
                                            f"has parent_md5='{'0' * 32}' in its metadata where '"),
    "recorded dataset out of place": (lambda f: _rewrite(f, 2, generation="5"), "gen_002.parquet",
                                      "has generation='5' in its metadata where '2' belongs"),
    "recorded dataset of another run": (lambda f: _rewrite(f, 1, fingerprint="other"), "gen_001.parquet",
                                        f"has fingerprint='other' in its metadata where '{FINGERPRINT}' belongs"),
    "first dataset unreadable": (lambda f: _truncate(f / "gen_000.parquet"), "gen_000.parquet",
                                 "is not a readable Parquet file"),
    "resume point replaced by its parent": (lambda f: _copy(f, "gen_002.parquet", "gen_003.parquet"),
                                            "gen_003.parquet", "has generation='2' in its metadata where '3' belongs"),
    "resume point of another lineage": (lambda f: _rewrite(f, 3, parent_md5="0" * 32), "gen_003.parquet",
                                        "has parent_md5="),
    "resume point of another run": (lambda f: _rewrite(f, 3, fingerprint="other"), "gen_003.parquet",
                                    "has fingerprint='other'"),
    "resume point edited, metadata kept": (lambda f: _edit_values(f, 3), "gen_003.parquet",
                                           "was edited (its content does not match its recorded sha256)"),
    "resume point truncated": (lambda f: _truncate(f / "gen_003.parquet"), "gen_003.parquet",
                               "is not a readable Parquet file"),
    "resume point missing": (lambda f: (f / "gen_003.parquet").unlink(), "gen_003.parquet", "is missing"),
}


def test_an_intact_folder_resumes_with_what_was_written(stored):
    folder, output = stored
    records, data, md5 = _resume(folder, output)
    assert [r["generation"] for r in records] == [0, 1, 2]
    assert [r["dataset_md5"] for r in records] == [storage.md5(storage.dataset_path(folder, g)) for g in range(3)]
    assert records[1]["metrics"]["sigma_hat"] == [2.0, 0.5, 0.25] and math.isnan(records[1]["metrics"]["ks"][1])
    assert md5 == storage.md5(storage.dataset_path(folder, 3))
    assert torch.equal(data.values, _toy(3).values) and torch.equal(data.is_real, _toy(3).is_real)


def test_a_record_carries_the_sha256_of_the_rest_of_its_content(stored):
    folder, _ = stored
    record = json.loads((folder / "gen_001.json").read_text())
    seal = record.pop("sha256")
    assert seal == hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_a_corrupt_file_is_named_with_the_fix(stored, name):
    folder, output = stored
    corrupt, victim, problem = CORRUPTIONS[name]
    corrupt(folder)
    with pytest.raises(CorruptDataError) as error:
        _resume(folder, output)
    message = str(error.value)
    assert message.startswith(f"{folder / victim} {problem}"), message
    assert message.endswith(f"; restore it with `dvc checkout --force {output}` or delete {folder} to start over")
    assert "\n" not in message


def test_a_folder_made_by_other_params_or_code_starts_over(stored):
    folder, output = stored
    said = []
    assert resume.completed_records(folder, output, said.append, "0" * 16, GENERATIONS) == []
    assert not folder.exists() and said == [f"{folder}: params or code changed since these generations were made; "
                                            "starting over"]


class _Study:
    config = {"n_samples": 8}


def test_data_stored_in_another_format_starts_over(monkeypatch):
    """The fingerprint covers the storage code: files it wrote in an older format are made again, not refused."""
    before = resume.fingerprint(_Study(), {}, 0, "mle")
    getsource = inspect.getsource
    monkeypatch.setattr(inspect, "getsource", lambda module: getsource(module) + ("#" if module is storage else ""))
    assert resume.fingerprint(_Study(), {}, 0, "mle") != before


SMALL = dict(gaussian={"n_samples": 8, "generations": 4, "seeds": 5})


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory, prefect_api) -> Path:
    """A folder in which the Gaussian study (SMALL) has run to the end; copy it before changing it."""
    root = tmp_path_factory.mktemp("finished")
    study_flow(study="gaussian", params_file=str(write_params(root, **SMALL)), root=str(root))
    return root


FLOW_CORRUPTIONS = {  # the faults a tester measured through the command line, as (corrupt(folder), file named)
    "truncated record": (lambda f: _truncate(f / "gen_002.json"), "gen_002.json"),
    "edited metric": (lambda f: _edit_metric(f / "gen_001.json"), "gen_001.json"),
    "resume point replaced by its parent": (
        lambda f: (_copy(f, "gen_002.parquet", "gen_003.parquet"), (f / "gen_003.json").unlink()), "gen_003.parquet"),
    "pair replaced by the next one": (lambda f: _replace_pair(f, 1), "gen_001.json"),
}


@pytest.mark.parametrize("name", FLOW_CORRUPTIONS)
def test_the_study_command_stops_with_one_line_naming_the_corrupt_file(finished_study, tmp_path, monkeypatch, capsys,
                                                                         name):
    shutil.copytree(finished_study, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    corrupt, victim = FLOW_CORRUPTIONS[name]
    corrupt(Path("data/generations/gaussian/ple"))
    summary = Path("metrics/gaussian/summary.json").read_bytes()
    capsys.readouterr()
    assert main(study_flow, ["gaussian"], ["gaussian", "params.yaml"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: data/generations/gaussian/ple/{victim} ")
    assert last.endswith("; restore it with `dvc checkout --force data/generations/gaussian` or delete "
                         "data/generations/gaussian/ple to start over")
    assert Path("metrics/gaussian/summary.json").read_bytes() == summary


@pytest.mark.slow
def test_the_fix_named_for_a_corrupt_file_restores_the_study(project_copy, prefect_api):
    """In a git + DVC repository: `dvc repro`, an edited record, the study command's one line, the fix it names run
    as written, and the study command again gives the same files as before."""
    repo, env = project_copy, subprocess_env(prefect_api)
    write_params(repo, **SMALL)
    run([sys.executable, "-m", "dvc", "repro", "gaussian"], repo, env)
    produced = [path for folder in ("data/generations/gaussian", "metrics/gaussian")
                for path in sorted((repo / folder).rglob("*")) if path.is_file()]
    before = {path: path.read_bytes() for path in produced}
    _edit_metric(repo / "data/generations/gaussian/mle/gen_002.json")

    study = [sys.executable, "-m", "flows.study", "gaussian", "params.yaml"]
    failed = run(study, repo, env, check=False)
    last = failed.stderr.strip().splitlines()[-1]
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert last.startswith("error: data/generations/gaussian/mle/gen_002.json was edited")
    fix = last.split("`")[1]
    assert fix == "dvc checkout --force data/generations/gaussian"
    run(shlex.split(fix), repo, env)
    run(study, repo, env)
    assert {path: path.read_bytes() for path in produced} == before
    assert "up to date" in run([sys.executable, "-m", "dvc", "status", "gaussian"], repo, env).stdout


# ---------------------------------------------------------------------------------------------------------------------
# Faults of the machine and of the user while a study runs: a held lock, a read-only folder, a full disk, Ctrl-C and a
# Prefect API that answers its health check but nothing else. Each ends the command with exactly one line on stderr
# (no traceback, no Prefect error log), exit code 2 (130 for Ctrl-C), and the rerun the line names works.

ERROR = re.compile(r"^error: .*$", re.MULTILINE)


def _study(folder: Path, env: dict[str, str], namespace: str | None = None) -> subprocess.CompletedProcess:
    """`python -m flows.study gaussian params.yaml` in `folder`; with `namespace`, run by that shell script (as
    "$0" "$@") in new user and mount namespaces, where it may mount file systems of its own."""
    command = [sys.executable, "-m", "flows.study", "gaussian", "params.yaml"]
    wrap = ["unshare", "-Urm", "sh", "-c", namespace] if namespace else []
    return subprocess.run([*wrap, *command], cwd=folder, env=env, capture_output=True, text=True, timeout=600)


def _one_error_line(stderr: str) -> str:
    """The only error line of `stderr`, checked to be its last line, with no traceback or Prefect error log."""
    assert "Traceback" not in stderr and "| ERROR" not in stderr, stderr[-3000:]
    (line,) = ERROR.findall(stderr)
    assert stderr.rstrip("\n").split("\n")[-1] == line
    return line


@pytest.fixture
def study_folder(tmp_path, prefect_api) -> tuple[Path, dict[str, str]]:
    """(folder, env): a small Gaussian study's params in `folder`, run against the session's Prefect server."""
    write_params(tmp_path, **SMALL)
    return tmp_path, {**subprocess_env(prefect_api), "PYTHONPATH": str(ROOT)}


def _namespaces_work() -> bool:
    """Whether this machine lets a process mount in its own user and mount namespaces (unshare -Urm)."""
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-Urm", "mount", "-t", "tmpfs", "tmpfs", "/mnt"], capture_output=True).returncode == 0


needs_mounts = pytest.mark.skipif(not _namespaces_work(), reason="needs unshare -Urm (user and mount namespaces)")


def test_a_held_lock_stops_the_command_before_anything_is_written(tmp_path, monkeypatch, capsys):
    write_params(tmp_path, **SMALL)
    holder = subprocess.Popen(["sleep", "60"])
    try:
        lock = tmp_path / ".locks/gaussian.lock"
        lock.parent.mkdir()
        lock.write_text(json.dumps({"run": "gaussian (1234)", "host": socket.gethostname(), "pid": holder.pid,
                                    "started": "2026-01-01 00:00:00"}))
        before = sorted(tmp_path.rglob("*"))
        monkeypatch.chdir(tmp_path)
        assert main(study_flow, ["gaussian"], ["gaussian", "params.yaml"], preflight=preflight) == 2
    finally:
        holder.kill()
    assert capsys.readouterr().err == (
        f"error: gaussian is locked by run gaussian (1234) (pid {holder.pid} on {socket.gethostname()}, since "
        "2026-01-01 00:00:00); wait for it to finish, or delete .locks/gaussian.lock if that run is dead\n")
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.slow
@needs_mounts
def test_a_read_only_folder_stops_the_run_with_one_line_and_the_rerun_works(study_folder):
    folder, env = study_folder
    (folder / "data/generations").mkdir(parents=True)
    failed = _study(folder, env, "mount --bind data/generations data/generations && "
                    'mount -o remount,bind,ro data/generations && exec "$0" "$@"')
    assert failed.returncode == 2
    assert re.fullmatch(r"error: data/generations/gaussian\S*: Read-only file system; run from a writable folder, "
                        r"then rerun the same command to resume", _one_error_line(failed.stderr))
    assert not any((folder / "data/generations").iterdir())

    rerun = _study(folder, env)
    assert rerun.returncode == 0 and "Traceback" not in rerun.stderr and "Error flushing" not in rerun.stderr
    assert (folder / "metrics/gaussian/summary.json").exists()


@pytest.mark.slow
@needs_mounts
def test_a_full_disk_stops_the_run_with_one_line_and_nothing_half_written(study_folder):
    """A 200 kB file system under data/generations: generations 0 and 1 fit (~70 kB per dataset), the next write
    fails; what is on disk is whole (no temporary file, every record beside its dataset)."""
    folder, env = study_folder
    write_params(folder, gaussian={"n_samples": 4000, "generations": 6, "seeds": 2, "methods": ["mle"]})
    (folder / "data/generations").mkdir(parents=True)
    full = ("mount -t tmpfs -o size=200k tmpfs data/generations && \"$0\" \"$@\"; code=$?; "
            "find data/generations -type f | sort; exit $code")
    failed = _study(folder, env, full)
    assert failed.returncode == 2
    line = _one_error_line(failed.stderr)
    assert re.fullmatch(r"error: data/generations/gaussian/mle/gen_00\d\.parquet: .*No space left on device; free "
                        r"disk space, then rerun the same command to resume", line), line
    files = failed.stdout.split()
    assert files and not [f for f in files if f.endswith(".tmp")]
    assert all(f.replace(".json", ".parquet") in files for f in files if f.endswith(".json"))


@pytest.mark.slow
def test_ctrl_c_stops_with_one_line_and_exit_130(study_folder):
    folder, env = study_folder
    write_params(folder, gaussian={"n_samples": 8, "generations": 200, "seeds": 5})
    process = subprocess.Popen([sys.executable, "-m", "flows.study", "gaussian", "params.yaml"], cwd=folder, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    marker = folder / "data/generations/gaussian/mle/gen_002.json"
    deadline = time.monotonic() + 300
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)  # shutdown is slow on a loaded machine
    assert process.returncode == 130, stderr[-3000:]
    assert _one_error_line(stderr) == ("error: interrupted; rerun the same command to resume at the first "
                                       "unfinished generation")


def _raise(exc: BaseException) -> Callable[[], None]:
    def run() -> None:
        raise exc
    return run


def _broken_cleanup() -> None:
    try:
        raise KeyboardInterrupt
    finally:
        raise RuntimeError("Cannot operate on a closed database.")  # a clean-up the interrupt broke


@pytest.mark.parametrize("run, code, line", [
    (_raise(KeyboardInterrupt()), 130, "error: interrupted; rerun the same command to resume at the first unfinished "
                                       "generation"),
    (_broken_cleanup, 130, "error: interrupted; rerun the same command to resume at the first unfinished generation"),
    (_raise(PermissionError(errno.EACCES, "Permission denied", "metrics/gaussian")), 2,
     "error: metrics/gaussian: Permission denied; make it writable, then rerun the same command to resume"),
    (_raise(OSError(errno.ENOSPC, "No space left on device")), 2,
     "error: No space left on device; free disk space, then rerun the same command to resume"),
    (_raise(OSError(errno.EDQUOT, "Disk quota exceeded", "x.parquet")), 2,
     "error: x.parquet: Disk quota exceeded; free space within your quota, then rerun the same command to resume"),
    (_raise(CorruptDataError("gen_001.json was edited; the fix")), 2, "error: gen_001.json was edited; the fix"),
])
def test_report_turns_what_a_user_meets_into_one_line(capsys, run, code, line):
    assert report(run) == code
    assert capsys.readouterr().err == line + "\n"


@pytest.mark.parametrize("exc", [FileNotFoundError(errno.ENOENT, "No such file", "x"), ValueError("a bug"),
                                 RuntimeError("a bug")])
def test_report_keeps_the_traceback_of_a_bug(exc):
    with pytest.raises(type(exc)):
        report(_raise(exc))


def test_the_debug_variable_shows_every_traceback(monkeypatch):
    monkeypatch.setenv(DEBUG, "1")
    for exc in (KeyboardInterrupt(), CorruptDataError("x"), OSError(errno.ENOSPC, "No space left on device")):
        with pytest.raises(type(exc)):
            report(_raise(exc))

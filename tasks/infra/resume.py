"""Resuming a study: which stored generations can be kept, after checking every hash they rely on.

A method's folder holds gen_<g>.parquet and, once generation g is complete, gen_<g>.json
(`tasks.infra.storage`). Both carry the fingerprint of what made them; a folder made by other
params or code is cleared. A record, or a dataset, that is unreadable, edited, out of place or does
not descend from the previous generation stops the run with a CorruptDataError naming it and the fix.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import models
from tasks import loop, steps
from tasks.errors import CorruptDataError
from tasks.infra import storage, workers
from tasks.loop import Study


def fingerprint(study: Study, loop_settings: dict, seed: int, method: str) -> str:
    """Hash of everything a stored generation depends on: the study's config, the loop settings,
    the seed, the method and the source code of the loop, the generation's steps and where they compute
    (one torch thread: `tasks.infra.workers`), the study, the models and the storage format."""
    modules = (loop, steps, workers, sys.modules[type(study).__module__], storage)
    sources = [inspect.getsource(module) for module in modules]
    sources += [path.read_text() for path in sorted(Path(models.__file__).parent.glob("*.py"))]
    payload = json.dumps({
        "study": study.config, "loop": loop_settings, "seed": seed, "method": method,
        "code": hashlib.sha256("\n".join(sources).encode()).hexdigest(),
    }, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def completed_records(folder: Path, output: Path, print_fn: Callable[[str], object], fingerprint_: str,
                      generations: int) -> list[dict]:
    """Records of the completed generations 0..k-1, each checked with its dataset; stale folders cleared.

    `output` is the DVC output that holds `folder`, named in the fix of a corrupt-data error."""
    if folder.exists():
        storage.remove_partial_files(folder)
    first = storage.dataset_path(folder, 0)
    if first.exists() and storage.checked_metadata(first, output).get("fingerprint") != fingerprint_:
        print_fn(f"{folder}: params or code changed since these generations were made; starting over")
        shutil.rmtree(folder)
    records = []
    while len(records) < generations and storage.record_path(folder, len(records)).exists():
        g = len(records)
        path = storage.record_path(folder, g)
        record = storage.read_record(path, output)
        if record["generation"] != g:
            raise CorruptDataError(f"{path} is the record of generation {record['generation']}, not {g} (copied or "
                                   f"renamed); {storage.restore_fix(folder, output)}")
        dataset = storage.verified_dataset(folder, g, record["dataset_md5"], output)
        storage.checked_metadata(dataset, output, **_lineage(g, fingerprint_, records))
        records.append(record)
    return records


def resume_dataset(folder: Path, output: Path, fingerprint_: str, records: list[dict]) -> tuple[loop.Dataset, str]:
    """D_k, the dataset of the first generation without a record (k = len(records) > 0), and its md5, after
    checking that it is the one model k-1 made: its lineage in its metadata and its content against its sha256."""
    path = storage.dataset_path(folder, len(records))
    data = storage.checked_dataset(path, output, **_lineage(len(records), fingerprint_, records))
    return data, storage.md5(path)


def _lineage(generation: int, fingerprint_: str, records: list[dict]) -> dict[str, str]:
    """The metadata D_generation must hold: its generation, the fingerprint and its parent's recorded md5."""
    parent = records[generation - 1]["dataset_md5"] if generation else ""
    return {"generation": str(generation), "fingerprint": fingerprint_, "parent_md5": parent}

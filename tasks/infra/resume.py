"""Resuming a study: which stored generations can be kept, after checking every hash they rely on.

A method's folder holds gen_<g>.parquet and, once generation g is complete, gen_<g>.json
(`tasks.infra.storage`). Both carry the fingerprint of what made them; a folder made by other
params or code is cleared, a dataset that does not match its record or its parent stops the run.
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
from tasks import loop
from tasks.errors import CorruptDataError
from tasks.infra import storage
from tasks.loop import Study


def fingerprint(study: Study, loop_settings: dict, seed: int, method: str) -> str:
    """Hash of everything a stored generation depends on: the study's config, the loop settings,
    the seed, the method and the source code of the loop, the study and the models."""
    sources = [inspect.getsource(loop), inspect.getsource(sys.modules[type(study).__module__])]
    sources += [path.read_text() for path in sorted(Path(models.__file__).parent.glob("*.py"))]
    payload = json.dumps({
        "study": study.config, "loop": loop_settings, "seed": seed, "method": method,
        "code": hashlib.sha256("\n".join(sources).encode()).hexdigest(),
    }, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def completed_records(folder: Path, output: Path, print_fn: Callable[[str], object], fingerprint_: str,
                      generations: int) -> list[dict]:
    """Records of the completed generations 0..k-1, their datasets verified; stale folders cleared.

    `output` is the DVC output that holds `folder`, named in the fix of a corrupt-data error."""
    if folder.exists():
        storage.remove_partial_files(folder)
    first = storage.record_path(folder, 0)
    stored = storage.read_record(first)["fingerprint"] if first.exists() else None
    if stored is None and storage.dataset_path(folder, 0).exists():
        stored = storage.read_metadata(storage.dataset_path(folder, 0))["fingerprint"]
    if stored is not None and stored != fingerprint_:
        print_fn(f"{folder}: params or code changed since these generations were made; starting over")
        shutil.rmtree(folder)
    records = []
    while len(records) < generations and storage.record_path(folder, len(records)).exists():
        record = storage.read_record(storage.record_path(folder, len(records)))
        storage.verified_dataset(folder, record["generation"], record["dataset_md5"], output)
        records.append(record)
    for parent, child in zip(records, records[1:]):
        child_meta = storage.read_metadata(storage.dataset_path(folder, child["generation"]))
        if child_meta["parent_md5"] != parent["dataset_md5"]:
            raise CorruptDataError(
                f"{storage.dataset_path(folder, child['generation'])} does not descend from generation "
                f"{parent['generation']}; restore it with `dvc checkout {output}` or delete {folder} to start over")
    return records

"""Every generation's dataset as Parquet, its record as JSON, all written atomically.

Layout under data/generations/<experiment>/<method>/:

    gen_003.parquet   D_3: columns seed, generation, method, source (real|synthetic), x;
                      schema metadata: experiment, method, generation, loop_mode, parent_md5
                      (md5 of gen_002.parquet, the DVC hash of that file), fingerprint, event_shape
    gen_003.json      the record of generation 3, written once it is complete: the md5 of
                      gen_003.parquet, the fingerprint and every metric per seed

A generation is complete when its record exists; a rerun resumes at the first incomplete one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from tasks.errors import CorruptDataError
from tasks.loop import Dataset


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success move it into place in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def remove_partial_files(folder: Path) -> None:
    """Delete temporary files left by a process killed in the middle of a write."""
    for tmp in folder.glob(".*.tmp"):
        tmp.unlink()


def md5(path: Path) -> str:
    """The md5 of the file's bytes: the hash DVC records for it."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dataset_path(folder: Path, generation: int) -> Path:
    return folder / f"gen_{generation:03d}.parquet"


def record_path(folder: Path, generation: int) -> Path:
    return folder / f"gen_{generation:03d}.json"


def write_dataset(path: Path, data: Dataset, metadata: dict[str, str]) -> str:
    """Write `data` as one row per (seed, point); return the file's md5."""
    seeds, n = data.values.shape[:2]
    event_shape = list(data.values.shape[2:])
    flat = data.values.reshape(seeds * n, -1).numpy()
    x = pa.array(flat[:, 0]) if not event_shape else pa.FixedSizeListArray.from_arrays(
        pa.array(flat.reshape(-1)), flat.shape[1]
    )
    source = np.where(data.is_real.numpy(), "real", "synthetic")
    table = pa.table({
        "seed": pa.array(np.repeat(np.arange(seeds, dtype=np.int32), n)),
        "generation": pa.array(np.full(seeds * n, int(metadata["generation"]), dtype=np.int32)),
        "method": pa.array([metadata["method"]] * (seeds * n)).dictionary_encode(),
        "source": pa.array(np.tile(source, seeds)).dictionary_encode(),
        "x": x,
    })
    metadata = {**metadata, "event_shape": json.dumps(event_shape)}
    table = table.replace_schema_metadata({k.encode(): str(v).encode() for k, v in metadata.items()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return md5(path)


def read_metadata(path: Path) -> dict[str, str]:
    raw = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in raw.items()}


def read_dataset(path: Path) -> Dataset:
    """Inverse of `write_dataset`."""
    table = pq.read_table(path)
    event_shape = json.loads(read_metadata(path)["event_shape"])
    seeds = pc.max(table.column("seed")).as_py() + 1
    column = table.column("x").combine_chunks()
    flat = column.values.to_numpy() if event_shape else column.to_numpy()
    values = torch.from_numpy(flat.copy()).reshape(seeds, -1, *event_shape)
    source = table.column("source").cast(pa.string()).to_numpy()[: values.shape[1]]
    return Dataset(values, torch.from_numpy(np.asarray(source == "real")))


def write_record(path: Path, record: dict) -> None:
    write_text(path, json.dumps(record))


def read_record(path: Path) -> dict:
    return json.loads(path.read_text())


def verified_dataset(folder: Path, generation: int, expected_md5: str, output: Path) -> Path:
    """The path of D_generation after checking its md5; CorruptDataError names the fix
    (`dvc checkout` of `output`, the DVC output holding the folder)."""
    path = dataset_path(folder, generation)
    fix = f"restore it with `dvc checkout {output}` or delete {folder} to start over"
    if not path.exists():
        raise CorruptDataError(f"{path} is missing although its generation was recorded; {fix}")
    if md5(path) != expected_md5:
        raise CorruptDataError(f"{path} does not match its recorded md5 {expected_md5} (truncated or edited); {fix}")
    return path

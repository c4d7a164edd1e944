"""Every generation's dataset as Parquet, its record as JSON, all written atomically.

Layout under data/generations/<experiment>/<method>/:

    gen_003.parquet   D_3: columns seed, generation, method, source (real|synthetic), x;
                      schema metadata: experiment, method, generation, loop_mode, parent_md5
                      (md5 of gen_002.parquet, the DVC hash of that file), fingerprint, event_shape,
                      content_sha256 (of the other metadata and every column's values)
    gen_003.json      the record of generation 3, written once it is complete: the md5 of
                      gen_003.parquet, the fingerprint, every metric per seed and sha256 (of the rest)

A generation is complete when its record exists; a rerun resumes at the first incomplete one.
Every check of a stored file raises CorruptDataError naming the file and the fix (`restore_fix`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from tasks.errors import CorruptDataError
from tasks.loop import Dataset

CONTENT = "content_sha256"  # the dataset's metadata key holding the sha256 of the rest of the file
SEAL = "sha256"  # the record's key holding the sha256 of the rest of the record
RECORD_KEYS = ("experiment", "method", "generation", "fingerprint", "dataset_md5", "metrics", SEAL)
EDITED = "was edited (its content does not match its recorded sha256)"
T = TypeVar("T")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success move it into place in one rename. A write the
    system refuses without naming a file (a full disk seen by pyarrow) is raised again naming `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise OSError(exc.errno, os.strerror(exc.errno), str(path)) from exc
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


def restore_fix(folder: Path, output: Path) -> str:
    """How to repair a corrupt file of `folder`: restore `output`, the DVC output holding it, or start over."""
    return f"restore it with `dvc checkout --force {output}` or delete {folder} to start over"


def write_dataset(path: Path, data: Dataset, metadata: dict[str, str]) -> str:
    """Write `data` as one row per (seed, point), its metadata sealed by CONTENT; return the file's md5."""
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
    metadata = {k: str(v) for k, v in {**metadata, "event_shape": json.dumps(event_shape)}.items()}
    table = table.replace_schema_metadata(metadata)
    table = table.replace_schema_metadata({**metadata, CONTENT: _content_sha256(table)})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return md5(path)


def _metadata(schema: pa.Schema) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}


def _content_sha256(table: pa.Table) -> str:
    """sha256 of the table's schema metadata but CONTENT and of every column's values, however Parquet encodes them."""
    digest = hashlib.sha256(json.dumps({k: v for k, v in _metadata(table.schema).items() if k != CONTENT},
                                       sort_keys=True).encode())
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        if pa.types.is_fixed_size_list(column.type):
            column = column.flatten()
        values = column.to_numpy(zero_copy_only=False)
        digest.update(f"{name}:{values.dtype}:{len(values)}:".encode())
        digest.update("\0".join(values).encode() if values.dtype == object else values.tobytes())
    return digest.hexdigest()


def read_metadata(path: Path) -> dict[str, str]:
    return _metadata(pq.read_schema(path))


def _dataset(table: pa.Table) -> Dataset:
    """The data of a table written by `write_dataset`."""
    event_shape = json.loads(_metadata(table.schema)["event_shape"])
    seeds = pc.max(table.column("seed")).as_py() + 1
    column = table.column("x").combine_chunks()
    flat = column.values.to_numpy() if event_shape else column.to_numpy()
    values = torch.from_numpy(flat.copy()).reshape(seeds, -1, *event_shape)
    source = table.column("source").cast(pa.string()).to_numpy()[: values.shape[1]]
    return Dataset(values, torch.from_numpy(np.asarray(source == "real")))


def read_dataset(path: Path) -> Dataset:
    """Inverse of `write_dataset`, without checks (for files already verified)."""
    return _dataset(pq.read_table(path))


def _read_parquet(read: Callable[[Path], T], path: Path, output: Path) -> T:
    """`read(path)`, pyarrow's failure to read the file turned into a CorruptDataError naming it."""
    try:
        return read(path)
    except (pa.ArrowException, OSError):
        reason = "is not a readable Parquet file (truncated or overwritten)" if path.exists() else "is missing"
        raise CorruptDataError(f"{path} {reason}; {restore_fix(path.parent, output)}") from None


def checked_metadata(path: Path, output: Path, **expected: str) -> dict[str, str]:
    """The schema metadata of the dataset at `path` (`output`: the DVC output holding it), checked to be readable
    and to hold the `expected` values (e.g. generation="3")."""
    metadata = _metadata(_read_parquet(pq.read_schema, path, output))
    for key, value in expected.items():
        if metadata.get(key) != value:
            raise CorruptDataError(f"{path} has {key}={metadata.get(key)!r} in its metadata where {value!r} belongs "
                                   f"(copied, renamed or made by another run); {restore_fix(path.parent, output)}")
    return metadata


def checked_dataset(path: Path, output: Path, **expected: str) -> Dataset:
    """The dataset at `path` after the checks of `checked_metadata` and of its content against CONTENT."""
    checked_metadata(path, output, **expected)
    table = _read_parquet(pq.read_table, path, output)
    if _metadata(table.schema).get(CONTENT) != _content_sha256(table):
        raise CorruptDataError(f"{path} {EDITED}; {restore_fix(path.parent, output)}")
    return _dataset(table)


def _seal(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_record(path: Path, record: dict) -> None:
    """Write `record` with SEAL, the sha256 of its canonical JSON, which `read_record` checks."""
    write_text(path, json.dumps({**record, SEAL: _seal(record)}))


def read_record(path: Path, output: Path) -> dict:
    """The record at `path` (`output`: the DVC output holding it) without its SEAL, checked to be whole and unedited."""
    fix = restore_fix(path.parent, output)
    try:
        record = json.loads(path.read_text())
    except ValueError:
        raise CorruptDataError(f"{path} is not valid JSON (truncated or overwritten); {fix}") from None
    missing = [key for key in RECORD_KEYS if not isinstance(record, dict) or key not in record]
    if missing:
        raise CorruptDataError(f"{path} is not a whole record (no {', '.join(missing)}); {fix}")
    body = {k: v for k, v in record.items() if k != SEAL}
    if record[SEAL] != _seal(body):
        raise CorruptDataError(f"{path} {EDITED}; {fix}")
    return body


def verified_dataset(folder: Path, generation: int, expected_md5: str, output: Path) -> Path:
    """The path of D_generation after checking its md5 (`output`: the DVC output holding `folder`)."""
    path = dataset_path(folder, generation)
    fix = restore_fix(folder, output)
    if not path.exists():
        raise CorruptDataError(f"{path} is missing although its generation was recorded; {fix}")
    if md5(path) != expected_md5:
        raise CorruptDataError(f"{path} does not match its recorded md5 {expected_md5} (truncated or edited); {fix}")
    return path

"""The Prefect tasks of one generation: fit -> evaluate -> sample -> build next dataset -> save.

Each task is a thin wrapper around a pure function of `tasks.loop`, `tasks.infra` or the
study, so tests can call `some_task.fn(...)`. Tasks take plain values (paths, the tracking URI,
run ids), never live clients. Randomness is keyed by (seed, purpose, method,
generation) and never by call order, which makes a resumed run identical to an uninterrupted one.
Results are not cached by Prefect: resuming is done from the stored generations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import loop
from tasks.curation import curate
from tasks.infra import storage, tracking
from tasks.loop import Dataset, Study
from tasks.params import LoopParams

COMPUTE = dict(cache_policy=NO_CACHE, retries=1)
IO = dict(cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[1, 2, 5])


@task(name="fit", task_run_name="fit {method} gen {generation}", **COMPUTE)
def fit_model(study: Study, data: Dataset, method: str, seed: int, generation: int) -> Any:
    """Fit generation g's model to D_g."""
    return study.fit(data, method, loop.generator(seed, "fit", method, generation))


@task(name="evaluate", task_run_name="evaluate {method} gen {generation}", **COMPUTE)
def evaluate_model(study: Study, model: Any, data: Dataset, method: str, generation: int) -> dict[str, np.ndarray]:
    """Every metric of generation g's model, one value per seed (arrays: Prefect does not walk them)."""
    return {name: values.double().numpy() for name, values in study.evaluate(model, data).items()}


@task(name="sample", task_run_name="sample {method} gen {generation}", **COMPUTE)
def sample_model(study: Study, model: Any, n: int, settings: LoopParams, method: str, seed: int,
                 generation: int) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """S_g: n samples per seed of model g-1 (generation is the one the samples are for), curated as
    `settings.curation` says, with the kept shares per seed ({} without curation)."""

    def draw(m: int, round_: int) -> torch.Tensor:
        keys = (seed, "sample", method, generation) + ((round_,) if round_ else ())
        return study.sample(model, m, settings.sampling_bias, loop.generator(*keys))

    if settings.curation.kind == "none":
        return draw(n, 0), {}
    kept, shares = curate(draw, study, settings.curation, n, loop.generator(seed, "curate", method, generation))
    return kept, {name: values.double().numpy() for name, values in shares.items()}


@task(name="build-dataset", task_run_name="build {method} gen {generation}", **COMPUTE)
def build_dataset(study: Study, settings: LoopParams, previous: Dataset, real0: Dataset, synthetic: torch.Tensor,
                  method: str, seed: int, generation: int) -> Dataset:
    """D_g (or the pool A_g) from generation g-1's stored dataset, D_0 and S_g according to the loop mode."""
    n_real, _ = loop.split_counts(settings.mode, study.n_samples, settings.real_fraction, settings.real_points)
    real = loop.real_part(
        settings.mode, real0, n_real,
        lambda n: study.draw_real(n, loop.generator(seed, "real", generation)),
        loop.generator(seed, "augment", method, generation),
    )
    return loop.next_dataset(settings.mode, previous, real, synthetic)


@task(name="save-dataset", task_run_name="save {method} gen {generation}", **IO)
def save_dataset(path: Path, data: Dataset, metadata: dict[str, str], method: str, generation: int) -> str:
    """Write D_g as Parquet (atomically); return its md5."""
    return storage.write_dataset(path, data, {**metadata, "method": method, "generation": str(generation)})


@task(name="save-record", task_run_name="record {method} gen {generation}", **IO)
def save_record(path: Path, record: dict, method: str, generation: int) -> None:
    """Mark generation g complete: its dataset's md5 and its metrics per seed."""
    metrics = {name: np.asarray(values).tolist() for name, values in record["metrics"].items()}
    storage.write_record(path, {**record, "metrics": metrics, "method": method, "generation": generation})


@task(name="log-generation", task_run_name="log {method} gen {generation}", **IO)
def log_generation(tracking_uri: str, run_id: str, stats: dict[str, float], dataset: Path, md5: str,
                   method: str, generation: int) -> None:
    """Send generation g's seed statistics and dataset input to MLflow."""
    tracking.log_generation(tracking_uri, run_id, generation, stats, dataset, md5)


@task(name="log-training", task_run_name="log training {method} gen {generation}", **IO)
def log_training(tracking_uri: str, run_id: str, curves: dict[str, list[float]], method: str,
                 generation: int) -> None:
    """Send the training curves of generation g's fit (e.g. fit and penalty terms) to MLflow."""
    tracking.log_training(tracking_uri, run_id, generation, curves)

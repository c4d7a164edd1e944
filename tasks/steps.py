"""One generation of the loop as one Prefect task: fit -> evaluate -> sample -> build D_(g+1) -> save.

Each step is a pure function of `tasks.loop`, `tasks.infra` or the study; the task chains them, so the
Prefect UI shows one task run per method and generation (named "<method> gen <g>") at the cost of one.
The task computes (`compute_generation`) where `tasks.infra.workers.compute` sends it, a worker process
when the study runs its method loops side by side, and stores here. Tests can call `run_generation.fn(...)`.
Randomness is keyed by (seed, purpose, method, generation) and never by call order, which makes a resumed
run identical to an uninterrupted one. Results are not cached by Prefect: resuming is done from the stored generations.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import loop
from tasks.curation import curate
from tasks.infra import storage, workers
from tasks.loop import Dataset, Study
from tasks.params import LoopParams


@dataclass(frozen=True)
class Generation:
    """What generation g leaves: its record (dataset md5, metrics per seed), the curves of its fit and,
    unless it is the last generation, the stored D_(g+1) and its md5."""

    record: dict
    curves: dict[str, list[float]]
    next_data: Dataset | None
    next_md5: str | None


@dataclass(frozen=True)
class Computed:
    """What generation g computes: its metrics per seed, the curves of its fit, and D_(g+1) (None after the last)."""

    metrics: dict[str, np.ndarray]
    curves: dict[str, list[float]]
    next_data: Dataset | None


def compute_generation(study: Study, settings: LoopParams, seed: int, method: str, generation: int, data: Dataset,
                       real0: Dataset) -> Computed:
    """Fit model g to D_g, evaluate it and, but after the last generation, build D_(g+1) from its samples: a pure
    function of its arguments, run where `tasks.infra.workers.compute` sends it."""
    g = generation
    train = loop.training_data(settings.mode, data, study.n_samples, loop.generator(seed, "subsample", method, g))
    model = study.fit(train, method, loop.generator(seed, "fit", method, g))
    metrics = {name: values.double().numpy() for name, values in study.evaluate(model, train).items()}
    next_data = None
    if g + 1 < study.generations:
        _, n_synth = loop.split_counts(settings.mode, study.n_samples, settings.real_fraction, settings.real_points)
        synthetic, kept = sample_model(study, model, n_synth, settings, method, seed, g + 1)
        metrics |= kept
        next_data = build_dataset(study, settings, data, real0, synthetic, method, seed, g + 1)
    return Computed(metrics, study.training_curves(model), next_data)


@task(name="generation", task_run_name="{method} gen {generation}", cache_policy=NO_CACHE, retries=1)
def run_generation(study: Study, settings: LoopParams, seed: int, method: str, generation: int, data: Dataset,
                   md5: str, real0: Dataset, folder: Path, metadata: dict[str, str]) -> Generation:
    """Compute generation g from D_g (stored in `folder` with md5 `md5`), store D_(g+1) (but after the last
    generation), then the record that marks generation g complete."""
    g = generation
    done = workers.compute(compute_generation, study, settings, seed, method, g, data, real0)
    next_md5 = None
    if done.next_data is not None:
        next_md5 = save_dataset(storage.dataset_path(folder, g + 1), done.next_data,
                                {**metadata, "parent_md5": md5}, method, g + 1)
    record = {"experiment": metadata["experiment"], "fingerprint": metadata["fingerprint"], "dataset_md5": md5,
              "metrics": done.metrics}
    lists = {name: np.asarray(values).tolist() for name, values in done.metrics.items()}
    storage.write_record(storage.record_path(folder, g), {**record, "metrics": lists, "method": method,
                                                          "generation": g})
    return Generation(record, done.curves, done.next_data, next_md5)


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


def save_dataset(path: Path, data: Dataset, metadata: dict[str, str], method: str, generation: int) -> str:
    """Write D_g as Parquet (atomically); return its md5."""
    return storage.write_dataset(path, data, {**metadata, "method": method, "generation": str(generation)})

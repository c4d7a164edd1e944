"""The self-consuming loop as Prefect flows, shared by every study.

`run_study` opens an MLflow parent run, runs `method_loop` (a subflow) for each method and has
a nested MLflow run per seed logged under the method's run in the background, then publishes the
tidy table, the curves, the DVC summary and the figure. `method_loop` chains the tasks of
`tasks.steps` generation by generation and resumes at the first generation without a record,
after checking the md5 of every stored dataset it relies on.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from prefect import flow, get_run_logger
from prefect.runtime import flow_run

import models
import models.ple
from tasks import loop, steps, storage, tables
from tasks.lock import experiment_lock
from tasks.loop import Study
from tasks.params import Params, flatten
from tasks.paths import StudyPaths
from tasks.tracking import StudyTracker


def fingerprint(study: Study, params: Params, method: str) -> str:
    """Hash of everything a stored generation depends on: the study's params, the loop settings,
    the seed, the method and the source code of the loop, the study and the models."""
    sources = [inspect.getsource(loop), inspect.getsource(sys.modules[type(study).__module__])]
    sources += [path.read_text() for path in sorted(Path(models.__file__).parent.glob("*.py"))]
    payload = json.dumps({
        "study": study.config,
        "loop": params.loop.model_dump(), "seed": params.seed, "method": method,
        "code": hashlib.sha256("\n".join(sources).encode()).hexdigest(),
    }, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def completed_records(folder: Path, output: Path, print_fn, fingerprint_: str, generations: int) -> list[dict]:
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
            raise storage.CorruptDataError(
                f"{storage.dataset_path(folder, child['generation'])} does not descend from generation "
                f"{parent['generation']}; restore it with `dvc checkout {output}` or delete {folder} to start over")
    return records


@flow(name="method-loop", flow_run_name="{experiment}: {method} {point}", log_prints=True,
      validate_parameters=False)
def method_loop(study: Study, params: Params, experiment: str, method: str, point: str, folder: Path,
                tracker: StudyTracker, run_id: str) -> list[dict]:
    """Run (or resume) generations 0..G-1 of one method at one grid point; return every record."""
    logger = get_run_logger()
    settings, seed, generations = params.loop, params.seed, study.generations
    key = fingerprint(study, params, method)
    output = next(parent for parent in folder.parents if parent.name == experiment)  # the DVC output
    records = completed_records(folder, output, logger.info, key, generations)
    for record in records:
        stats = _stats(record["metrics"])
        steps.log_generation(tracker, run_id, stats, storage.dataset_path(folder, record["generation"]),
                             record["dataset_md5"], method, record["generation"])
    start = len(records)
    if start:
        logger.info(f"resuming {experiment}/{method} at generation {start} of {generations}")
    if start == generations:
        return records

    real0 = loop.real_dataset(study.draw_real(study.n_samples, loop.generator(seed, "real", 0)))
    meta = {"experiment": experiment, "loop_mode": settings.mode, "fingerprint": key,
            "sampling_bias": str(settings.sampling_bias), "real_fraction": str(settings.real_fraction)}
    path = storage.dataset_path(folder, start)
    if start == 0:
        data, md5 = real0, steps.save_dataset(path, real0, {**meta, "parent_md5": ""}, method, 0)
    else:
        data, md5 = storage.read_dataset(path), storage.md5(path)
    _, n_synth = loop.split_counts(settings.mode, study.n_samples, settings.real_fraction)

    for g in range(start, generations):
        model = steps.fit_model(study, data, method, seed, g)
        curve = getattr(model, "curve", None)  # models trained by gradient descent carry their curves
        if curve is not None and curve.fit:
            steps.log_training(tracker, run_id, {"fit": curve.fit, "penalty": curve.penalty}, method, g)
        metrics = steps.evaluate_model(study, model, data, method, g)
        if g + 1 < generations:
            synthetic = steps.sample_model(study, model, n_synth, settings.sampling_bias, method, seed, g + 1)
            next_data = steps.build_dataset(study, settings, data, real0, synthetic, method, seed, g + 1)
            next_path = storage.dataset_path(folder, g + 1)
            next_md5 = steps.save_dataset(next_path, next_data, {**meta, "parent_md5": md5}, method, g + 1)
        record = {"experiment": experiment, "fingerprint": key, "dataset_md5": md5, "metrics": metrics}
        steps.save_record(storage.record_path(folder, g), record, method, g)
        stats = _stats(metrics)
        steps.log_generation(tracker, run_id, stats, path, md5, method, g)
        records.append({**record, "method": method, "generation": g})
        logger.info(f"{experiment}/{method} generation {g}: "
                    + ", ".join(f"{k}={v:.4g}" for k, v in stats.items() if k.endswith("_mean")))
        if g + 1 < generations:
            data, md5, path = next_data, next_md5, next_path
    return records


def _stats(metrics: dict[str, np.ndarray | list[float]]) -> dict[str, float]:
    """MLflow metric names: <metric>_mean, <metric>_se, <metric>_median over seeds."""
    return {f"{name}_{k}": v for name, values in metrics.items()
            for k, v in tables.seed_stats(values).items() if v == v}


Figures = Callable[[pd.DataFrame, pd.DataFrame, StudyPaths], list[Path]]  # (tidy, curves, paths)


def run_study(studies: list[Study], params: Params, root: Path, figures: Figures) -> pd.DataFrame:
    """Run every method at every grid point through the loop, then write the tables and figures.

    `studies` holds one study per grid point (one in all for a study without a grid), each with an
    optional `methods` restricting what runs there; `figures`
    draws the experiment's figures from the tidy and curve tables. Returns the tidy table.
    """
    experiment = studies[0].experiment
    with experiment_lock(root, experiment, f"{flow_run.name} ({flow_run.id})"):
        return _run_locked(studies, params, root, figures, experiment)


def _run_locked(studies: list[Study], params: Params, root: Path, figures: Figures, experiment: str) -> pd.DataFrame:
    paths = StudyPaths(root, experiment)
    runtime = {"torch": torch.__version__, "device": str(models.ple.default_device())}
    tags = {"loop_mode": params.loop.mode, "point_keys": ",".join(studies[0].point), **runtime}
    tracker = StudyTracker(experiment, paths.mlflow_dir, {**flatten(params), **runtime}, tags)
    ok = False
    try:
        frames = []
        for study in studies:
            name = tables.point_name(study.point)
            for method in getattr(study, "methods", None) or params.methods_of(experiment):
                folder = paths.method_dir(method) / name if name else paths.method_dir(method)
                run_id = tracker.start_method(method, study.point, study.labels)
                try:
                    records = method_loop(study, params, experiment, method, name, folder, tracker, run_id)
                except BaseException:
                    tracker.finish(run_id, ok=False)
                    raise
                tracker.finish(run_id)
                tracker.log_seeds(run_id, records)
                frames += [tables.tidy_rows(experiment, method, r["generation"], r["metrics"]).assign(
                    **study.point, **study.labels) for r in records]
        tidy = pd.concat(frames, ignore_index=True)
        publish(tidy, paths, tracker, figures, list(studies[0].point))
        ok = True
        return tidy
    finally:
        tracker.close(ok)


def publish(tidy: pd.DataFrame, paths: StudyPaths, tracker: StudyTracker, figures: Figures,
            grid: list[str]) -> None:
    """per_generation.csv, curves.csv, summary.json and the figures, each written atomically."""
    curve_table = tables.curves(tidy, grid)
    storage.write_text(paths.per_generation, tidy.to_csv(index=False))
    storage.write_text(paths.curves, curve_table.to_csv(index=False))
    storage.write_text(paths.summary, tables.summary_json(curve_table, grid))
    for artifact in [*figures(tidy, curve_table, paths), paths.per_generation, paths.summary]:
        tracker.log_artifact(artifact)

"""The self-consuming loop as Prefect flows, shared by every study.

`run_study` opens an MLflow parent run, runs `method_loop` (a subflow) for each method and grid
point, as many side by side as there are worker processes (`tasks.infra.workers`), each without a
heartbeat thread of its own (stopping one waits up to a second, and the study's flow run, in the same
process, has one), has every seed's values logged to the method's run as
`seeds.csv` in the background, then publishes the tidy table, the curves, the DVC summary and the
figures. `method_loop` runs one task (`tasks.steps.run_generation`) per generation, queues its
metrics for MLflow (sent in the background) and resumes at the first generation without a record,
after checking every stored record and dataset it relies on (`tasks.infra.resume`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from tasks import loop, steps
from tasks.infra import resume, storage, tracking, workers
from tasks.infra.device import default_device
from tasks.infra.lock import experiment_lock
from tasks.infra.paths import StudyPaths
from tasks.infra.tracking import StudyTracker
from tasks.loop import Study
from tasks.methods import HYPERNETWORK_METHODS
from tasks.outputs import tables
from tasks.params import LoopParams, flatten
from tasks.studies import Params
from tasks.studies.base import Figures


@flow(name="method-loop", flow_run_name="{experiment}: {method} {point}", log_prints=True)
def method_loop(study: Study, settings: LoopParams, seed: int, experiment: str, method: str, point: str,
                folder: Path, run_id: str) -> list[dict]:
    """Run (or resume) generations 0..G-1 of one method at one grid point, one task run each, their metrics
    queued for MLflow run `run_id`; return every record."""
    logger = get_run_logger()
    generations = study.generations
    key = resume.fingerprint(study, settings.model_dump(), seed, method)
    output = next(parent for parent in folder.parents if parent.name == experiment)  # the DVC output
    records = resume.completed_records(folder, output, logger.info, key, generations)
    for record in records:
        tracking.log_generation(run_id, record["generation"], _stats(record["metrics"]),
                                storage.dataset_path(folder, record["generation"]), record["dataset_md5"], {})
    start = len(records)
    if start:
        logger.info(f"resuming {experiment}/{method} at generation {start} of {generations}")
    if start == generations:
        return records

    real0 = loop.real_dataset(study.draw_real(study.n_samples, loop.generator(seed, "real", 0)))
    meta = {"experiment": experiment, "loop_mode": settings.mode, "fingerprint": key,
            "sampling_bias": str(settings.sampling_bias), "real_fraction": str(settings.real_fraction),
            "real_points": str(settings.real_points)}
    if start == 0:
        data, md5 = real0, steps.save_dataset(storage.dataset_path(folder, 0), real0, {**meta, "parent_md5": ""},
                                              method, 0)
    else:
        data, md5 = resume.resume_dataset(folder, output, key, records)

    for g in range(start, generations):
        done = steps.run_generation(study, settings, seed, method, g, data, md5, real0, folder, meta)
        stats = _stats(done.record["metrics"])
        tracking.log_generation(run_id, g, stats, storage.dataset_path(folder, g), md5, done.curves)
        records.append({**done.record, "method": method, "generation": g})
        logger.info(f"{experiment}/{method} generation {g}: "
                    + ", ".join(f"{k}={v:.4g}" for k, v in stats.items() if k.endswith("_mean")))
        data, md5 = done.next_data, done.next_md5
    return records


def _stats(metrics: dict[str, np.ndarray | list[float]]) -> dict[str, float]:
    """MLflow metric names: <metric>_mean, <metric>_se, <metric>_median over seeds."""
    return {f"{name}_{k}": v for name, values in metrics.items()
            for k, v in tables.seed_stats(values).items() if v == v}


def run_study(studies: list[Study], params: Params, root: Path, figures: Figures, section: str,
              light: bool = False) -> pd.DataFrame:
    """Run every method at every grid point through the loop, then write the tables and figures.

    `studies` holds one study per grid point (one in all for a study without a grid), each with an
    optional `methods` restricting what runs there (else the methods of params section `section`);
    `figures` draws the experiment's figures from the tidy and curve tables; a `light` study's jobs
    run one after the other in this process (starting worker processes would cost more than they
    compute). Returns the tidy table.
    """
    experiment = studies[0].experiment
    with experiment_lock(root, experiment, f"{flow_run.name} ({flow_run.id})"):
        return _run_locked(studies, params, root, figures, experiment, section, 1 if light else workers.count())


def _run_locked(studies: list[Study], params: Params, root: Path, figures: Figures, experiment: str,
                section: str, processes: int) -> pd.DataFrame:
    paths = StudyPaths(root, experiment)
    runtime = {"torch": torch.__version__, "device": str(default_device())}
    tags = {"loop_mode": params.loop.mode, "point_keys": ",".join(studies[0].point.keys), **runtime,
            **({"dvc_experiment": os.environ["DVC_EXP_NAME"]} if "DVC_EXP_NAME" in os.environ else {})}
    tracker = StudyTracker(experiment, paths.mlflow_dir, {**flatten(params), **runtime}, tags)
    ok = False

    def method_table(study: Study, method: str) -> pd.DataFrame:
        name = study.point.name
        folder = paths.method_dir(method) / name if name else paths.method_dir(method)
        run_id = tracker.start_method(method, study.point, study.labels)
        try:
            with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                records = method_loop(study, params.loop, params.seed, experiment, method, name, folder, run_id)
        except BaseException:
            tracker.finish(run_id, ok=False)
            raise
        tracker.finish(run_id)
        table = tables.tidy_rows(experiment, method, records).assign(**study.point.coordinates, **study.labels)
        tracker.log_seeds(run_id, table)
        return table

    try:
        jobs = [(study, method) for study in studies for method in study.methods or params.methods_of(section)]
        # the hypernetwork methods' loops take longest: started first, they leave the short ones to fill the end
        order = sorted(range(len(jobs)), key=lambda i: jobs[i][1] not in HYPERNETWORK_METHODS)
        done = workers.side_by_side(method_table, [jobs[i] for i in order], processes)
        frames = [done[order.index(i)] for i in range(len(jobs))]
        tidy = pd.concat(frames, ignore_index=True)
        publish(tidy, paths, tracker, lambda curve_table: figures(studies, params, tidy, curve_table, paths),
                studies[0].point.keys)
        ok = True
        return tidy
    finally:
        tracker.close(ok)


def publish(tidy: pd.DataFrame, paths: StudyPaths, tracker: StudyTracker,
            draw: Callable[[pd.DataFrame], list[Path]], grid: list[str]) -> None:
    """per_generation.csv, curves.csv, summary.json, then the figures `draw` makes from the curves,
    each written atomically and logged to the parent run."""
    curve_table = tables.curves(tidy, grid)
    storage.write_text(paths.per_generation, tidy.to_csv(index=False))
    storage.write_text(paths.curves, curve_table.to_csv(index=False))
    storage.write_text(paths.summary, tables.summary_json(curve_table, grid))
    for artifact in [*draw(curve_table), paths.per_generation, paths.summary]:
        tracker.log_artifact(artifact)

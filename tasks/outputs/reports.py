"""A study's report from MLflow alone: mean ± standard error across seeds per method and generation.

The report reads the study's latest finished execution (the parent run tagged `level=study`),
its method runs and their `seeds.csv` (every seed's values) through MLflow's client, so it needs
neither the study's files nor the machine that ran it. The statistics are those of
`tasks.outputs.tables`, computed from the seeds' values, so they equal `curves.csv` of that execution.
"""

from __future__ import annotations

import tempfile
from fnmatch import fnmatch
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run

from tasks.errors import ReportError
from tasks.infra import storage
from tasks.infra.tracking import SEEDS
from tasks.loop import GridPoint
from tasks.response import degenerate
from tasks.outputs import tables
from tasks.outputs.figures import draw_metric, save
from tasks.studies import spec

PAGE = 1000  # runs per search request


def search(client: MlflowClient, experiment_id: str, filter_string: str, **kwargs) -> list[Run]:
    """Every run of the experiment that matches the filter, page by page."""
    found, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=PAGE, page_token=token, **kwargs)
        found += page
        token = page.token
        if not token:
            return found


def latest_execution(client: MlflowClient, study: str) -> Run:
    """The study's most recent finished parent run."""
    experiment = client.get_experiment_by_name(study)
    runs = experiment and client.search_runs(
        [experiment.experiment_id], "tags.level = 'study' and attributes.status = 'FINISHED'",
        max_results=1, order_by=["attributes.start_time DESC"])
    if not runs:
        raise ReportError(f"no finished run of study {study!r} in MLflow at {client.tracking_uri}; "
                          f"run it first (dvc repro {study})")
    return runs[0]


def children(client: MlflowClient, run: Run) -> list[Run]:
    return search(client, run.info.experiment_id, f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")


def grid_keys(execution: Run) -> list[str]:
    return [key for key in execution.data.tags["point_keys"].split(",") if key]


def seed_values(client: MlflowClient, execution: Run, patterns: tuple[str, ...]) -> pd.DataFrame:
    """Tidy rows (method, <grid keys>, seed, generation, metric, value) of the metrics matching
    `patterns`, read from the `seeds.csv` of every method run of `execution`."""
    frames = []
    with tempfile.TemporaryDirectory() as folder:
        for method_run in children(client, execution):
            run_id = method_run.info.run_id
            if any(item.path == SEEDS for item in client.list_artifacts(run_id)):
                frames.append(pd.read_csv(client.download_artifacts(run_id, SEEDS, folder)))
    tidy = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["metric"])
    tidy = tidy[[any(fnmatch(metric, p) for p in patterns) for metric in tidy["metric"]]]
    if tidy.empty:
        raise ReportError(f"run {execution.info.run_name!r} has no method runs with seed values of "
                          f"{', '.join(patterns)}")
    return tidy


def metric_order(tidy: pd.DataFrame, patterns: tuple[str, ...]) -> list[str]:
    """The metrics present, in the order of `patterns`, then of their first appearance."""
    present = list(dict.fromkeys(tidy["metric"]))
    return [m for p in patterns for m in present if fnmatch(m, p)]


def cell(mean: float, se: float) -> str:
    return "" if pd.isna(mean) else f"{mean:.4g}" if pd.isna(se) else f"{mean:.4g} ± {se:.4g}"


def degenerate_mark(row: pd.Series) -> str:
    """' (degenerate: H ignores its data)' for a hypernetwork fit whose mean response is below the threshold."""
    value = row.get("response_mean")
    return " (degenerate: H ignores its data)" if value is not None and not pd.isna(value) and degenerate(value) else ""


def markdown(curve_table: pd.DataFrame, grid: list[str], metrics: list[str], title: list[str]) -> str:
    """A section per metric: a row per grid point and generation, a column per method, 'mean ± se',
    marked where the method's hypernetwork is degenerate."""
    methods = sorted(curve_table["method"].unique())
    lines = [f"# {title[0]}", "", title[1], ""]
    for metric in metrics:
        lines += [f"## {metric}", "", "| " + " | ".join([*grid, "generation", *methods]) + " |",
                  "|" + "---|" * (len(grid) + 1 + len(methods))]
        for values, rows in curve_table.groupby([*grid, "generation"], sort=True):
            by_method = rows.set_index("method")
            cells = [cell(by_method.at[m, f"{metric}_mean"], by_method.at[m, f"{metric}_se"])
                     + degenerate_mark(by_method.loc[m]) if m in by_method.index else "" for m in methods]
            lines.append("| " + " | ".join([*map(str, values), *cells]) + " |")
        lines.append("")
    return "\n".join(lines)


def comparison_figure(curve_table: pd.DataFrame, grid: list[str], metrics: list[str], path: Path,
                      title: list[str]) -> Path:
    """A row of panels per grid point, one per metric present there: mean ± SE band and median per method."""
    points = list(curve_table.groupby(grid, sort=True)) if grid else [((), curve_table)]
    panels = [[m for m in metrics if rows[f"{m}_mean"].notna().any()] for _, rows in points]
    columns = max(map(len, panels))
    fig, axes = plt.subplots(len(points), columns, figsize=(5.2 * columns, 3.8 * len(points)), squeeze=False)
    for row, ((values, rows), names) in enumerate(zip(points, panels)):
        label = GridPoint(dict(zip(grid, values))).name
        for column, ax in enumerate(axes[row]):
            if column >= len(names):
                ax.set_visible(False)
                continue
            draw_metric(ax, rows, names[column], legend=row == column == 0)
            ax.set_title(f"{label}: {names[column]}" if label else names[column], fontsize=9)
    fig.suptitle("\n".join(title), fontsize=10)
    return save(fig, path)


def write_report(client: MlflowClient, study: str, out: Path) -> list[Path]:
    """`out/<study>/comparison.png` and `table.md` of the study's latest finished execution."""
    patterns = spec(study).report_metrics
    execution = latest_execution(client, study)
    grid = grid_keys(execution)
    tidy = seed_values(client, execution, patterns)
    curve_table, metrics = tables.curves(tidy, grid), metric_order(tidy, patterns)
    seeds = ", ".join(f"{method} {count}" for method, count in tidy.groupby("method")["seed"].nunique().items())
    title = [f"{study}: run {execution.info.run_name}, {execution.data.tags['loop_mode']} loop",
             f"mean ± standard error across seeds ({seeds})"]
    table = out / study / "table.md"
    storage.write_text(table, markdown(curve_table, grid, metrics, title) + "\n")
    figure = comparison_figure(curve_table, grid, metrics, out / study / "comparison.png", title)
    return [figure, table]

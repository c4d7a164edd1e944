"""Metric tables: the tidy per-seed table, per-generation curves across seeds, the DVC summary.

The same metric names appear in every output: `per_generation.csv` (one row per experiment,
method, seed, generation and metric), `curves.csv` (`<metric>_mean`, `_se`, `_median` per
method and generation, for `dvc plots`), `summary.json` (the last generation, for
`dvc metrics show`) and MLflow.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from tasks.response import degenerate

TIDY_COLUMNS = ["experiment", "method", "seed", "generation", "metric", "value"]


def tidy_rows(experiment: str, method: str, records: Iterable[dict]) -> pd.DataFrame:
    """Long-format rows of a method's generations (records with `generation` and `metrics` {name: per-seed
    values}): one row per generation, metric and seed, in that order, built as one table."""
    generations, names, seeds, values = [], [], [], []
    for record in records:
        for name, per_seed in record["metrics"].items():
            per_seed = np.asarray(per_seed, dtype=float)
            generations.append(np.full(len(per_seed), record["generation"]))
            names.append(np.full(len(per_seed), name, dtype=object))
            seeds.append(np.arange(len(per_seed)))
            values.append(per_seed)
    return pd.DataFrame({"experiment": experiment, "method": method, "seed": np.concatenate(seeds),
                         "generation": np.concatenate(generations), "metric": np.concatenate(names),
                         "value": np.concatenate(values)})


def standard_error(values: np.ndarray) -> float:
    """The standard error of the mean over seeds: sample std (ddof = 1) / sqrt(S); NaN for one seed."""
    values = np.asarray(values, dtype=float)
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")


def seed_stats(values: np.ndarray) -> dict[str, float]:
    """Mean, standard error (NaN for one seed; left out of summary.json) and median over seeds."""
    values = np.asarray(values, dtype=float)
    return {"mean": float(values.mean()), "se": standard_error(values), "median": float(np.median(values))}


def curves(tidy: pd.DataFrame, grid: list[str] = ()) -> pd.DataFrame:
    """One row per (method, grid point, generation): `<metric>_mean`, `<metric>_se`, `<metric>_median`."""
    keys = ["method", *grid, "generation"]
    rows = []
    for values, group in tidy.groupby(keys, sort=True):
        row = dict(zip(keys, values))
        for metric, values in group.groupby("metric", sort=False)["value"]:
            row.update({f"{metric}_{k}": v for k, v in seed_stats(values.to_numpy()).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def summary(curve_table: pd.DataFrame, grid: list[str] = ()) -> dict:
    """The last generation's statistics: {'generation': G, method: {name: value}}, or with a grid
    {'generation': G, method: {'weight=0.95,n_samples=50': {name: value}}}; a hypernetwork fit also
    gets 'degenerate': whether its mean estimator response is below the threshold (H ignores its data)."""
    last = int(curve_table["generation"].max())
    final = curve_table[curve_table["generation"] == last]
    out: dict = {"generation": last}
    for _, row in final.iterrows():
        stats = {k: float(v) for k, v in row.items()
                 if k not in ("method", "generation", *grid) and not pd.isna(v)}  # a metric this point lacks
        if "response_mean" in stats:
            stats["degenerate"] = degenerate(stats["response_mean"])
        if grid:
            point = ",".join(f"{key}={row[key]}" for key in grid)
            out.setdefault(row["method"], {})[point] = stats
        else:
            out[row["method"]] = stats
    return out


def summary_json(curve_table: pd.DataFrame, grid: list[str] = ()) -> str:
    return json.dumps(summary(curve_table, grid), indent=2) + "\n"

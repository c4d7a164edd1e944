"""Outputs of the fairness study: fairness curves per downstream mode, the last generation's table, samples."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch

from tasks.infra import storage
from tasks.infra.paths import StudyPaths
from tasks.outputs.figures import draw_metric, save
from tasks.outputs.tables import standard_error
from tasks.response import degenerate
from tasks.studies.fairness import attributes as ad
from tasks.studies.fairness.group_metrics import GROUP_ACCS, aggregate_over_seeds
from tasks.studies.fairness.study import FairnessStudy
from tasks.studies.images.figures import generations_grid

FAIRNESS_CURVES = ["acc", "eo", "wga"]
GROUP_CURVES = ["rare_ratio", "share_y0_s1", "share_y1_s0"]


def curves(curve_table: pd.DataFrame, paths: StudyPaths, modes: list[str], title: str) -> Path:
    """Rows: acc, eo, wga, then the rare groups' shares in D_g; columns: downstream modes."""
    columns = max(len(modes), len(GROUP_CURVES))
    fig, axes = plt.subplots(len(FAIRNESS_CURVES) + 1, columns, figsize=(4.6 * columns, 3.4 * 4), squeeze=False)
    for row, metric in zip(axes, FAIRNESS_CURVES):
        for ax, mode in zip(row, modes):
            draw_metric(ax, curve_table, f"{metric}_{mode}", legend=False)
            ax.set_title(f"{metric}, classifier: {mode}", fontsize=9)
    for ax, metric in zip(axes[-1], GROUP_CURVES):
        draw_metric(ax, curve_table, metric, legend=False)
        ax.set_title(f"{metric} in D_g" + (" (1: kept as in D_0)" if metric == "rare_ratio" else ""), fontsize=9)
    for ax in axes.flat:
        if not ax.has_data():
            ax.set_axis_off()
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    return save(fig, paths.figures / "curves.png")


def _cell(mean: float, se: float | None = None) -> str:
    return f"{mean:.3f}" if se is None or se != se else f"{mean:.3f} ± {se:.3f}"


def last_generation_table(tidy: pd.DataFrame, paths: StudyPaths, modes: list[str]) -> Path:
    """Markdown: per method and mode at the last generation, AIM-Fair's aggregation over seeds
    (acc, eo, eo_max: mean ± SE; wga: min of the seed-averaged group accuracies), rare_ratio and, for
    the hypernetwork methods, the estimator response, marked when degenerate."""
    last = tidy[tidy["generation"] == tidy["generation"].max()]
    seeds = last["seed"].nunique()
    lines = [f"Generation {int(last['generation'].iloc[0])}, {seeds} seeds; balanced real test set. "
             "acc, eo, eo_max, wga per seed: mean ± SE; wga (AIM-Fair): min over groups of the seed-averaged "
             "group accuracies; rare_ratio: share of the groups s != y in D_g over their share in D_0; response: "
             "the hypernetwork's estimator response (docs/methods.md).", "",
             "| method | classifier | acc | eo | eo_max | wga (AIM-Fair) | wga per seed | rare_ratio | response |",
             "|---|---|---|---|---|---|---|---|---|"]
    for method, rows in last.groupby("method", sort=True):
        values = {name: group.sort_values("seed")["value"].to_numpy() for name, group in rows.groupby("metric")}
        rare = values["rare_ratio"]
        response = values.get("response")
        response_cell = "" if response is None else _cell(response.mean(), standard_error(response)) + (
            " (degenerate: H ignores its data)" if degenerate(response.mean()) else "")
        for mode in modes:
            per_seed = {name: values[f"{name}_{mode}"] for name in ("acc", "eo", "eo_max", *GROUP_ACCS)}
            summary = aggregate_over_seeds(per_seed)
            wga = values[f"wga_{mode}"]
            lines.append("| " + " | ".join([
                method, mode, _cell(summary["acc"], summary["acc_se"]), _cell(summary["eo"], summary["eo_se"]),
                _cell(summary["eo_max"], summary["eo_max_se"]), _cell(summary["wga"]),
                _cell(wga.mean(), standard_error(wga)), _cell(rare.mean(), standard_error(rare)), response_cell]) + " |")
    path = paths.metrics / "last_generation.md"
    storage.write_text(path, "\n".join(lines) + "\n")
    return path


def samples(study: FairnessStudy, paths: StudyPaths, methods: list[str], count: int = 24) -> Path:
    """Rows: methods; columns: generations; each cell the first `count` images of D_g (seed 0), y = 0
    above y = 1: the rare styles (white digits among y = 0, black among y = 1) are visible at a glance."""
    def by_target(method: str, g: int) -> torch.Tensor:
        rows = storage.read_dataset(storage.dataset_path(paths.method_dir(method), g)).values[0]
        images, y = ad.split_rows(rows, study.image_shape)
        return torch.cat([images[y == 0][: count // 2], images[y == 1][: count // 2]])

    return generations_grid(paths, methods, study.generations, by_target, 6, (1.9, 2.3), "; top y=0, bottom y=1")


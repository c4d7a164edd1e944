"""Metric-vs-generation figures: mean with a standard-error band and the median, per method."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from tasks.infra.storage import atomic_path  # noqa: E402
from tasks.response import degenerate  # noqa: E402


def draw_metric(ax, curve_table: pd.DataFrame, metric: str, reference: pd.Series | None = None,
                legend: bool = True) -> None:
    """Mean ± SE band and median (dashed) of `metric` per method on one axes; a hypernetwork method
    whose last generation's response is degenerate says so in the legend."""
    for method, rows in curve_table.groupby("method", sort=True):
        g, mean, se = rows["generation"], rows[f"{metric}_mean"], rows[f"{metric}_se"].fillna(0.0)
        (line,) = ax.plot(g, mean, label=f"{method}{degenerate_note(rows)} mean ± SE")
        ax.fill_between(g, mean - se, mean + se, color=line.get_color(), alpha=0.25, linewidth=0)
        ax.plot(g, rows[f"{metric}_median"], linestyle="--", color=line.get_color(), label=f"{method} median")
    if reference is not None:
        ax.plot(reference.index, reference.values, color="black", linestyle=":", label=reference.name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("generation")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7)


def degenerate_note(rows: pd.DataFrame) -> str:
    """' [degenerate: H ignores its data]' when the last generation's mean response is below the threshold."""
    if "response_mean" not in rows:
        return ""
    last = rows.loc[rows["generation"].idxmax(), "response_mean"]
    return " [degenerate: H ignores its data]" if not pd.isna(last) and degenerate(last) else ""


def save(fig, path: Path) -> Path:
    """Write the figure as PNG atomically and close it."""
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def plot_curves(
    curve_table: pd.DataFrame,
    metrics: list[str],
    path: Path,
    title: str,
    references: dict[str, pd.Series] | None = None,
) -> Path:
    """One panel per metric; `references` maps a metric to a theory curve indexed by generation."""
    references = references or {}
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        draw_metric(ax, curve_table, metric, references.get(metric))
    fig.suptitle(title)
    return save(fig, path)

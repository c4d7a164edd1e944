"""Figures of the GMM study: the paper's Fig. 3 heatmap of KL_MLE - KL_PLE, and KL curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from tasks.outputs.figures import draw_metric, save
from tasks.outputs.tables import standard_error
from tasks.response import DEGENERATE_BELOW


def paired_difference(tidy: pd.DataFrame, baseline: str, method: str) -> pd.DataFrame:
    """Per generation and grid point: mean and standard error over seeds of KL_baseline - KL_method.

    Both methods start from the same real data per seed, so the difference is taken seed by seed.
    """
    kl = tidy[tidy.metric == "kl"].pivot_table(index=["generation", "weight", "n_samples", "seed"],
                                               columns="method", values="value")
    diff = (kl[baseline] - kl[method]).groupby(level=["generation", "weight", "n_samples"])
    return pd.DataFrame({"mean": diff.mean(), "se": diff.agg(standard_error)}).reset_index()


def kl_difference_heatmap(tidy: pd.DataFrame, path: Path, baseline: str = "mle", method: str = "ple") -> Path:
    """One heatmap per generation over (weight, n_samples); positive (red): `method` has the lower KL."""
    diff = paired_difference(tidy, baseline, method)
    generations = sorted(diff.generation.unique())
    weights, sizes = sorted(diff.weight.unique()), sorted(diff.n_samples.unique())
    limit = max(float(diff["mean"].abs().max()), 1e-12)
    fig, axes = plt.subplots(1, len(generations), figsize=(1.2 + 1.1 * len(sizes) * len(generations),
                                                           1.6 + 0.6 * len(weights)), squeeze=False,
                             layout="constrained")
    for ax, g in zip(axes[0], generations):
        cell = diff[diff.generation == g].set_index(["weight", "n_samples"])
        grid = np.array([[cell.loc[(w, n), "mean"] for n in sizes] for w in weights])
        image = ax.imshow(grid, cmap="RdBu_r", vmin=-limit, vmax=limit, origin="lower", aspect="auto")
        for i, w in enumerate(weights):
            for j, n in enumerate(sizes):
                value = cell.loc[(w, n), "mean"]
                ax.text(j, i, f"{value:.3f}\n±{cell.loc[(w, n), 'se']:.3f}", ha="center", va="center",
                        fontsize=6, color="white" if abs(value) > 0.6 * limit else "black")
        ax.set_xticks(range(len(sizes)), [str(n) for n in sizes])
        ax.set_yticks(range(len(weights)), [str(w) for w in weights])
        ax.set_xlabel("n_samples")
        ax.set_title(f"generation {g}", fontsize=9)
    axes[0][0].set_ylabel("weight")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label=f"KL_{baseline} - KL_{method}")
    fig.suptitle(f"KL(p_true || q_{baseline}) - KL(p_true || q_{method}), mean ± SE over seeds "
                 f"(positive: {method} better)", fontsize=10)
    return save(fig, path)


def kl_curves(curve_table: pd.DataFrame, path: Path) -> Path:
    """KL against generation per method, one panel per grid point (rows: weight, columns: n_samples)."""
    weights, sizes = sorted(curve_table.weight.unique()), sorted(curve_table.n_samples.unique())
    fig, axes = plt.subplots(len(weights), len(sizes), figsize=(4.2 * len(sizes), 3.2 * len(weights)),
                             squeeze=False, sharex=True)
    for i, w in enumerate(weights):
        for j, n in enumerate(sizes):
            rows = curve_table[(curve_table.weight == w) & (curve_table.n_samples == n)]
            draw_metric(axes[i][j], rows, "kl", legend=i == j == 0)
            axes[i][j].set_title(f"weight={w}, n_samples={n}", fontsize=9)
    fig.suptitle("KL(p_true || q_est) per generation: mean ± SE and median over seeds")
    return save(fig, path)


def final_kl_against_lambda(curve_table: pd.DataFrame, path: Path, title: str) -> Path:
    """Last generation against lambda (log axis), one line per penalty form: KL, and the estimator
    response with the degenerate threshold; mle and hyper_mle as reference bands."""
    last = curve_table[curve_table.generation == curve_table.generation.max()]
    ple = last[last.method == "ple"].sort_values("lam")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("kl", "response")):
        for form, rows in ple.groupby("form", sort=True):
            ax.errorbar(rows.lam, rows[f"{metric}_mean"], yerr=rows[f"{metric}_se"].fillna(0.0), marker="o",
                        capsize=3, label=f"ple ({form}) mean ± SE")
        for method, row in last[last.method != "ple"].set_index("method").iterrows():
            if pd.isna(row.get(f"{metric}_mean")):
                continue
            mean, se = row[f"{metric}_mean"], row[f"{metric}_se"]
            (line,) = ax.plot(ple.lam.unique(), [mean] * ple.lam.nunique(), linestyle="--",
                              label=f"{method} mean ± SE")
            ax.fill_between(ple.lam.unique(), mean - se, mean + se, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_xscale("log")
        ax.set_xlabel("lambda")
        ax.grid(alpha=0.3)
    axes[0].set_yscale("symlog", linthresh=0.01)  # a diverging form's KL spans orders of magnitude
    axes[0].set_ylim(bottom=0.0)
    axes[0].set_ylabel(f"KL(p_true || q_est), generation {int(last.generation.max())}")
    axes[1].axhline(DEGENERATE_BELOW, color="red", linewidth=1, label="degenerate below")
    axes[1].set_ylabel("relative response (lowest identified statistic)")
    if ple.get("response_mean", pd.Series(dtype=float)).isna().all():
        axes[1].text(0.5, 0.5, "no statistic MLE identifies here", ha="center", transform=axes[1].transAxes)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save(fig, path)

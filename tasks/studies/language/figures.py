"""Figures of the language studies: perplexity and tail mass against generation, and the unigram and
diversity metrics; one curve per method (mean ± SE band, median), the corpus's own values dotted."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tasks.infra.paths import StudyPaths
from tasks.outputs.figures import plot_curves
from tasks.studies.language import metrics


def references(study, generations: list[int]) -> dict[str, pd.Series]:
    """The corpus's own values, drawn beside the models': the source's perplexity floor exp(H_L) (when known),
    its rare tokens' share, and distinct-n of its held-out sequences."""
    corpus, values = study.corpus, {}
    if corpus.floor is not None:
        values["perplexity"] = ("source floor exp(H_L)", corpus.floor)
    values["tail_mass"] = ("corpus p(R)", corpus.share(study.rare))
    for n in (1, 2):
        values[f"distinct_{n}"] = ("held-out corpus", float(metrics.distinct(study.heldout[None], n, corpus.vocab)))
    return {metric: pd.Series(value, index=generations, name=name) for metric, (name, value) in values.items()}


def figures(studies, params, tidy: pd.DataFrame, curve_table: pd.DataFrame, paths: StudyPaths) -> list[Path]:
    """curves.png: perplexity and tail mass; diversity.png: KL of the unigram, distinct-1 and distinct-2."""
    study = studies[0]
    section = study.params
    title = (f"{study.experiment}: transformer ({section.preset}) on {study.corpus.vocab} tokens x {section.length}, "
             f"{params.loop.mode} loop, T = {params.loop.sampling_bias}, n={section.n_samples}, "
             f"{section.seeds} seeds (mean ± SE, median)")
    lines = references(study, sorted(curve_table.generation.unique()))
    return [plot_curves(curve_table, ["perplexity", "tail_mass"], paths.figures / "curves.png", title, lines),
            plot_curves(curve_table, ["kl_unigram", "distinct_1", "distinct_2"], paths.figures / "diversity.png",
                        title, lines)]

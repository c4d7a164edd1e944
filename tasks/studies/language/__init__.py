"""The language studies: a small decoder-only transformer trained, generation after generation, on
sequences of a source whose probabilities are known (`language`: a Markov chain over a Zipf-like
vocabulary, models/markov.py), or of a user's text files (`language_text`: data/raw/text/*.txt, e.g.
WikiText-2), by mle, hyper_mle and ple; sampling bias = temperature. Both read params section `language`.
"""

from __future__ import annotations

from tasks.studies.base import StudySpec
from tasks.studies.language.figures import figures
from tasks.studies.language.params import LanguageParams
from tasks.studies.language.study import build_source, build_text

REPORT_METRICS = ("perplexity", "tail_mass", "kl_unigram", "distinct_*", "response")

LANGUAGE = StudySpec(name="language", section="language", params=LanguageParams, build=build_source,
                     figures=figures, report_metrics=REPORT_METRICS)
LANGUAGE_TEXT = StudySpec(name="language_text", section="language", params=LanguageParams, build=build_text,
                          figures=figures, report_metrics=REPORT_METRICS, raw_data="text", sweepable=False)

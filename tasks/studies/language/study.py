"""A language study as a `tasks.loop.Study`: a decoder-only transformer fitted generation after generation to
sequences of a corpus (`tasks.studies.language.corpus`), by mle, hyper_mle and ple.

Datasets hold token ids (S, N, L). Sampling bias = temperature: the loop's samples are drawn from
softmax(logits / T) with T = loop.sampling_bias. Metrics per seed (`metrics.py`): perplexity on
eval_sequences fixed held-out sequences (the true perplexity under the source for `language`) and its
Monte Carlo standard error, and from eval_sequences samples of the model (fixed noise, T = 1) the
KL of the reference unigram to the model's unigram, the tail mass on the rarest tenth of the tokens
and distinct-1, distinct-2; for hyper_mle and ple the final fit and penalty terms and the estimator
response (`tasks.response`) to the tail mass: probes are n sequences of the corpus with the rare
tokens made PROBE_FACTORS times as likely, each valued at its expected share of rare tokens. The
reweighted training of H draws the shares of the sequences with and without a rare token.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from models.markov import MarkovSource
from models.ple import Fitted, sample_weights
from models.transformer import PRESETS, Transformer
from tasks.infra import storage
from tasks.infra.device import default_device
from tasks.infra.paths import StudyPaths
from tasks.loop import Dataset
from tasks.methods import HYPERNETWORK_METHODS, fit_method
from tasks.response import Probes, Responsive, probe_generator
from tasks.studies.base import StudyBase
from tasks.studies.language import metrics
from tasks.studies.language.corpus import Corpus, MarkovCorpus, read_text
from tasks.studies.language.params import LanguageParams

EVAL_SEED = 0  # the same held-out sequences and sampling noise for every method and generation
PROBE_FACTORS = (0.5, 1.0, 2.0)


@dataclass(frozen=True)
class LanguageStudy(StudyBase, Responsive):
    """`corpus`: where real sequences come from; `heldout`: the fixed sequences (M, L) of the perplexity;
    `digest`: what else the stored generations depend on (the text files' md5)."""

    params: LanguageParams
    experiment: str
    corpus: Corpus
    heldout: torch.Tensor
    digest: str = ""
    device: torch.device = torch.device("cpu")

    @property
    def config(self) -> dict:
        unused = "text" if isinstance(self.corpus, MarkovCorpus) else "source"
        return {**self.params.model_dump(exclude={"methods", "eval_sequences", unused}), "digest": self.digest}

    @property
    def event_size(self) -> int:
        return self.params.length

    def make_target(self) -> Transformer:
        return Transformer(self.corpus.vocab, self.params.length, PRESETS[self.params.preset])

    @cached_property
    def rare(self) -> torch.Tensor:
        return self.corpus.rare

    def draw_real(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.corpus.draw(self.seeds * n, generator).view(self.seeds, n, -1)

    def fit(self, data: Dataset, method: str, generator: torch.Generator) -> Fitted:
        """The transformer's own cross-entropy for mle; hypernetworks with lambda = 0 (hyper_mle) or lam (ple)."""
        groups = torch.isin(data.values, self.rare).any(-1).long() if method in HYPERNETWORK_METHODS else None
        return fit_method(method, data.values, self.make_target, self.params.hyper, self.params.ple, generator,
                          self.device, groups=groups)

    def sample(self, model: Fitted, n: int, sampling_bias: float, generator: torch.Generator) -> torch.Tensor:
        """Token ids (S, n, L) drawn at temperature sampling_bias."""
        target = self.make_target().to(self.device)
        batch = metrics.chunk_size(self.seeds, self.params.length, self.corpus.vocab)
        return sample_weights(target, model.estimate, n, sampling_bias, generator, batch).argmax(-1)

    def model_unigram(self, model: Fitted, samples: torch.Tensor) -> torch.Tensor:
        return metrics.model_unigram(self.make_target().to(self.device), model.estimate, samples)

    def probes(self) -> Probes:
        """n sequences of the corpus with the rare tokens PROBE_FACTORS times as likely, valued at their
        expected share of rare tokens."""
        tilted = [self.corpus.tilted(self.rare, factor) for factor in PROBE_FACTORS]
        return Probes({"tail_mass": tuple(corpus.share(self.rare) for corpus in tilted)},
                      tuple(corpus.draw(self.seeds * self.n_samples, probe_generator(self.experiment, k))
                            .view(self.seeds, self.n_samples, -1) for k, corpus in enumerate(tilted)))

    def statistics(self, estimate: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """tail_mass: the model's unigram mass on the rare tokens, from eval_sequences samples (fixed noise)."""
        model = Fitted(estimate)
        samples = self.sample(model, self.params.eval_sequences, 1.0, probe_generator(self.experiment, "statistic"))
        return {"tail_mass": metrics.tail_mass(self.model_unigram(model, samples), self.rare)}

    def evaluate(self, model: Fitted, data: Dataset) -> dict[str, torch.Tensor]:
        target = self.make_target().to(self.device)
        ppl, ppl_se = metrics.perplexity(metrics.token_log_probs(target, model.estimate, self.heldout))
        samples = self.sample(model, self.params.eval_sequences, 1.0, torch.Generator().manual_seed(EVAL_SEED))
        unigram = self.model_unigram(model, samples)
        values = {"perplexity": ppl, "perplexity_mc_se": ppl_se, "kl_unigram": metrics.kl(self.corpus.unigram, unigram),
                  "tail_mass": metrics.tail_mass(unigram, self.rare),
                  **{f"distinct_{n}": metrics.distinct(samples, n, self.corpus.vocab) for n in (1, 2)},
                  **self.response_metrics(model)}
        if model.ensemble is not None:
            values["fit_loss"] = model.curve.final_fit
            values["penalty"] = model.curve.final_penalty
        return values


def build_source(params, root: Path) -> list[LanguageStudy]:
    """The study of the known Markov source."""
    section = params.language
    s = section.source
    corpus = MarkovCorpus(MarkovSource.zipf(s.vocab, s.zipf, s.rank, s.strength, s.seed), section.length)
    heldout = corpus.draw(section.eval_sequences, torch.Generator().manual_seed(EVAL_SEED))
    return [LanguageStudy(section, "language", corpus, heldout, device=default_device())]


def build_text(params, root: Path) -> list[LanguageStudy]:
    """The study of the text files in data/raw/text."""
    section = params.language
    text = read_text(StudyPaths(root, "language_text").raw / "text", section.text, section.length)
    heldout = text.heldout.draw(section.eval_sequences, torch.Generator().manual_seed(EVAL_SEED))
    digest = ",".join(f"{path.name}:{storage.md5(path)}" for path in text.files)
    return [LanguageStudy(section, "language_text", text.train, heldout, digest, default_device())]

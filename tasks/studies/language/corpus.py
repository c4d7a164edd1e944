"""Where the language studies' sequences come from: the known Markov source, or a user's text files.

A corpus draws sequences of L token ids, knows its reference unigram distribution p (the true
unigram of the source; the token frequencies of the text's training part) and, from p, the rare
tokens: the ceil(V / 10) tokens of lowest p (ties: the lower id). It can be tilted, every rare
token made `factor` times as likely, for the estimator response's probes.

Text files (data/raw/text/*.txt, UTF-8, read in name order and joined) are split into words (on
white space) or characters. The first 1 - test_fraction of the token stream is the training part:
its `vocab - 1` most frequent tokens (ties: the first in sorted order) keep ids 0.. in that order,
every other token is `<unk>`, the last id. Real sequences are windows of L consecutive tokens drawn
uniformly from the training part; the rest is held out.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from models.markov import MarkovSource
from tasks.errors import InputUnavailableError, ParamsError
from tasks.studies.language.params import TextParams

UNKNOWN = "<unk>"
TAIL = 0.1  # the rare tokens: the rarest tenth of the vocabulary


def rarest(weights: torch.Tensor) -> torch.Tensor:
    """The ceil(V / 10) tokens of lowest weight (..., V) -> (..., ceil(V / 10)), lowest first (ties: the lower id)."""
    return weights.argsort(dim=-1, stable=True)[..., : math.ceil(TAIL * weights.shape[-1])]


class Corpus(ABC):
    """Sequences of `length` token ids from a vocabulary of `vocab`."""

    vocab: int
    length: int

    @property
    @abstractmethod
    def unigram(self) -> torch.Tensor:
        """The reference unigram distribution p (V,), float64."""

    @property
    def floor(self) -> float | None:
        """The lowest perplexity any model can reach on the corpus's sequences; None when unknown."""
        return None

    @abstractmethod
    def draw(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """`count` sequences (count, L) of token ids, int64."""

    @abstractmethod
    def tilted(self, tokens: torch.Tensor, factor: float) -> Corpus:
        """The corpus with `tokens` made `factor` times as likely."""

    @abstractmethod
    def share(self, tokens: torch.Tensor) -> float:
        """The expected share of `tokens` among the tokens of a drawn sequence."""

    @property
    def rare(self) -> torch.Tensor:
        """The rare tokens of the reference unigram, in id order."""
        return rarest(self.unigram).sort().values


@dataclass(frozen=True)
class MarkovCorpus(Corpus):
    """Sequences of the known source: x_1 ~ mu, then the chain (models/markov.py)."""

    source: MarkovSource
    length: int

    @property
    def vocab(self) -> int:
        return self.source.vocab

    @property
    def unigram(self) -> torch.Tensor:
        return self.source.unigram

    @property
    def floor(self) -> float:
        """exp(H_L): the source's own perplexity on its sequences."""
        return math.exp(self.source.sequence_entropy(self.length))

    def draw(self, count: int, generator: torch.Generator) -> torch.Tensor:
        return self.source.sample(count, self.length, generator)

    def tilted(self, tokens: torch.Tensor, factor: float) -> MarkovCorpus:
        return MarkovCorpus(self.source.tilted(tokens, factor), self.length)

    def share(self, tokens: torch.Tensor) -> float:
        """mu(tokens): every position has the stationary marginal."""
        return float(self.source.unigram[tokens].sum())


@dataclass(frozen=True)
class TextCorpus(Corpus):
    """Windows of `length` consecutive tokens of `stream`, window w drawn with probability weights[w] (uniform
    when None)."""

    stream: torch.Tensor  # (N,) token ids, int64
    vocab: int
    length: int
    weights: torch.Tensor | None = None

    @property
    def unigram(self) -> torch.Tensor:
        """The token frequencies of the stream."""
        return torch.bincount(self.stream, minlength=self.vocab).double() / len(self.stream)

    def draw(self, count: int, generator: torch.Generator) -> torch.Tensor:
        windows = len(self.stream) - self.length + 1
        if self.weights is None:
            starts = torch.randint(windows, (count,), generator=generator)
        else:
            starts = torch.multinomial(self.weights, count, replacement=True, generator=generator)
        return self.stream[starts[:, None] + torch.arange(self.length)]

    def counts(self, tokens: torch.Tensor) -> torch.Tensor:
        """How many of `tokens` each window holds: (windows,) float64."""
        hits = torch.cat([torch.zeros(1, dtype=torch.float64), torch.isin(self.stream, tokens).double().cumsum(0)])
        return hits[self.length:] - hits[: len(hits) - self.length]

    def probabilities(self) -> torch.Tensor:
        """P(w) of every window: (windows,) float64."""
        windows = len(self.stream) - self.length + 1
        return torch.full((windows,), 1.0 / windows, dtype=torch.float64) if self.weights is None else \
            self.weights / self.weights.sum()

    def tilted(self, tokens: torch.Tensor, factor: float) -> TextCorpus:
        """Window w drawn with probability proportional to its old one times factor^(count of tokens in w)."""
        return TextCorpus(self.stream, self.vocab, self.length,
                          self.probabilities() * factor ** self.counts(tokens))

    def share(self, tokens: torch.Tensor) -> float:
        """sum_w P(w) count_w(tokens) / L."""
        return float((self.probabilities() * self.counts(tokens)).sum() / self.length)


def tokenize(text: str, level: str) -> list[str]:
    return text.split() if level == "word" else list(text)


def vocabulary(tokens: list[str], cap: int) -> list[str]:
    """The `cap - 1` most frequent tokens (ties in sorted order), then <unk>."""
    ranked = sorted(Counter(tokens).items(), key=lambda item: (-item[1], item[0]))
    return [token for token, _ in ranked[: cap - 1]] + [UNKNOWN]


@dataclass(frozen=True)
class Text:
    """The text files read, their training and held-out parts, and the vocabulary (id -> token)."""

    files: list[Path]
    train: TextCorpus
    heldout: TextCorpus
    words: list[str]


def read_text(folder: Path, params: TextParams, length: int) -> Text:
    """The text files of `folder`; one line naming what is missing or too short otherwise."""
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise InputUnavailableError(f"{folder} holds no .txt files; put UTF-8 text there (e.g. WikiText-2's "
                                    "wiki.train.tokens saved as train.txt)")
    tokens = []
    for path in files:
        try:
            tokens += tokenize(path.read_text(encoding="utf-8"), params.tokenizer)
        except UnicodeDecodeError as exc:
            raise InputUnavailableError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    cut = round((1 - params.test_fraction) * len(tokens))
    if min(cut, len(tokens) - cut) < length:
        raise ParamsError(f"language: the {len(tokens)} {params.tokenizer} tokens of {folder} leave fewer than "
                          f"language.length = {length} in the training or the held-out part "
                          f"(language.text.test_fraction = {params.test_fraction}); add text or shorten length")
    words = vocabulary(tokens[:cut], params.vocab)
    index = {word: i for i, word in enumerate(words)}
    stream = torch.tensor([index.get(token, len(words) - 1) for token in tokens], dtype=torch.int64)
    return Text(files, TextCorpus(stream[:cut], len(words), length), TextCorpus(stream[cut:], len(words), length),
                words)

"""The params section of the language studies (`language:`): the known source, the text reader, the model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from models.transformer import PRESETS
from tasks.params import HyperStudyParams, Strict


class SourceParams(Strict):
    """The Markov source of `models.markov.MarkovSource.zipf`: tokens of Zipf-like frequencies."""

    vocab: int = Field(default=32, ge=2, description="V, tokens of the source")
    zipf: float = Field(default=1.2, gt=0.0, description="exponent s of the Zipf weights j^-s")
    rank: int = Field(default=4, ge=1, description="dimension r of the token vectors of the transitions")
    strength: float = Field(default=2.0, ge=0.0, description="beta: how much the previous token matters (0: "
                            "independent tokens)")
    seed: int = Field(default=0, ge=0, description="the source's own seed (the same source whatever the global seed)")


class TextParams(Strict):
    """The reader of data/raw/text/*.txt (study language_text)."""

    tokenizer: Literal["word", "char"] = Field(default="word", description="word: split on white space; char: "
                                               "every character a token")
    vocab: int = Field(default=2000, ge=2, description="tokens kept: the vocab - 1 most frequent of the training "
                       "part, and `<unk>` for every other")
    test_fraction: float = Field(default=0.1, gt=0.0, lt=1.0, description="the text's last share, held out for "
                                 "the perplexity")


class LanguageParams(HyperStudyParams):
    """The `language:` section: a decoder-only transformer on sequences of a known source (`language`) or of
    text files (`language_text`)."""

    length: int = Field(default=12, ge=2, description="L, tokens per sequence")
    n_samples: int = Field(ge=2, description="sequences per generation")
    eval_sequences: int = Field(default=512, ge=10, description="held-out sequences and model samples per seed "
                                "for the metrics")
    preset: str = Field(default="small", description="the transformer's size: small (CPU) or gpu "
                        "(models/transformer.py)")
    source: SourceParams = Field(default_factory=SourceParams)
    text: TextParams = Field(default_factory=TextParams)

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        if value not in PRESETS:
            raise ValueError(f"preset {value!r} is not one of the transformer presets: {', '.join(PRESETS)}")
        return value

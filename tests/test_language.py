"""The language studies: the known source's exact probabilities, the transformer as a generator of the PLE
engine, the corpora, the metrics, and the study through the flow."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch.func import functional_call, stack_module_state, vmap

from flows.cli import main
from flows.study import study_flow
from models.hypernet import HyperNetwork
from models.markov import MarkovSource, entropy
from models.transformer import PRESETS, Transformer, TransformerConfig, one_hot
from tasks.errors import InputUnavailableError, ParamsError
from tasks.infra import storage
from tasks.loop import generator, real_dataset
from tasks.studies import load_params, spec
from tasks.studies.language import metrics
from tasks.studies.language.corpus import UNKNOWN, MarkovCorpus, TextCorpus, read_text
from tasks.studies.language.params import TextParams
from tasks.studies.language.study import PROBE_FACTORS

from conftest import ROOT, colour, figure_pixels, write_params


def _source(vocab=32, strength=2.0, seed=0) -> MarkovSource:
    return MarkovSource.zipf(vocab, 1.2, 4, strength, seed)


# --- the known source -------------------------------------------------------------------------------------------

def test_rows_are_distributions_and_mu_is_their_stationary_distribution_in_decreasing_order():
    source = _source()
    mu = source.unigram
    torch.testing.assert_close(source.transition.sum(1), torch.ones(32, dtype=torch.float64))
    torch.testing.assert_close(mu @ source.transition, mu)
    assert float(mu.sum()) == pytest.approx(1.0) and (mu > 0).all()
    assert (mu.diff() <= 0).all()  # tokens numbered by decreasing stationary probability


def test_the_unigram_is_zipf_like():
    """log mu against log rank: nearly a line of slope about -s (s = 1.2)."""
    rank, log_mu = torch.arange(1, 33, dtype=torch.float64).log(), _source().unigram.log()
    assert torch.corrcoef(torch.stack([rank, log_mu]))[0, 1] < -0.95
    slope = ((rank - rank.mean()) * (log_mu - log_mu.mean())).sum() / (rank - rank.mean()).pow(2).sum()
    assert -1.6 < slope < -0.9


def test_entropy_analytic_and_monte_carlo_agree_within_their_standard_error():
    """H_L = (H(mu) + (L - 1) h) / L against the mean of -log p(x) / L over sampled sequences, and h against the
    mean of -log P(x_t | x_(t-1)); both within 3 standard errors, and context lowers the entropy by far more."""
    source, length, count = _source(), 16, 20_000
    x = source.sample(count, length, torch.Generator().manual_seed(0))
    per_sequence = -source.log_prob(x) / length
    se = float(per_sequence.std() / math.sqrt(count))
    assert abs(float(per_sequence.mean()) - source.sequence_entropy(length)) < 3 * se
    transitions = -source.token_log_probs(x)[:, 1:].mean(1)
    se_rate = float(transitions.std() / math.sqrt(count))
    assert abs(float(transitions.mean()) - source.entropy_rate()) < 3 * se_rate
    assert float(entropy(source.unigram)) - source.entropy_rate() > 100 * se_rate


def test_log_probabilities_of_every_sequence_sum_to_one():
    source, length = _source(vocab=4), 3
    every = torch.tensor(list(itertools.product(range(4), repeat=length)))
    assert float(source.log_prob(every).exp().sum()) == pytest.approx(1.0, abs=1e-12)


def test_samples_follow_mu_at_every_position_and_the_transitions():
    source = _source(vocab=8)
    x = source.sample(40_000, 4, torch.Generator().manual_seed(1))
    for t in range(4):
        share = torch.bincount(x[:, t], minlength=8).double() / len(x)
        assert ((share - source.unigram).abs() < 4 * (source.unigram / len(x)).sqrt() + 1e-3).all(), t
    after_zero = x[:, 1:][x[:, :-1] == 0]
    share = torch.bincount(after_zero, minlength=8).double() / len(after_zero)
    assert ((share - source.transition[0]).abs() < 4 * (source.transition[0] / len(after_zero)).sqrt() + 1e-3).all()


def test_strength_zero_gives_independent_zipf_tokens():
    source = _source(strength=0.0)
    zipf = torch.arange(1, 33, dtype=torch.float64) ** -1.2
    torch.testing.assert_close(source.unigram, zipf / zipf.sum())
    assert source.entropy_rate() == pytest.approx(float(entropy(source.unigram)))
    assert source.sequence_entropy(16) == pytest.approx(source.entropy_rate())


def test_the_source_depends_on_its_own_seed_alone():
    torch.manual_seed(5)
    first = _source(seed=3).transition
    torch.manual_seed(6)
    assert torch.equal(first, _source(seed=3).transition) and not torch.equal(first, _source(seed=4).transition)


def test_tilting_makes_the_tokens_factor_times_as_likely_in_every_row():
    source, tokens = _source(vocab=8), torch.tensor([6, 7])
    tilted = source.tilted(tokens, 2.0)
    ratio = tilted.transition / source.transition
    torch.testing.assert_close(ratio[:, 6] / ratio[:, 0], torch.full((8,), 2.0, dtype=torch.float64))
    assert tilted.unigram[tokens].sum() > source.unigram[tokens].sum()


# --- the transformer --------------------------------------------------------------------------------------------

def _model(vocab=6, length=5, seed=0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(vocab, length, TransformerConfig(width=8, layers=2, heads=2, hidden=16))
    with torch.no_grad():  # away from GPT-2's small initial weights, so that the outputs differ between inputs
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return model


def test_nll_is_the_mean_next_token_cross_entropy_of_ids_and_of_one_hot_rows():
    model, x = _model(), torch.randint(6, (7, 5), generator=torch.Generator().manual_seed(0))
    logits = model.logits(x)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 6), x.reshape(-1))
    torch.testing.assert_close(model.nll(x), expected)
    torch.testing.assert_close(model.nll(one_hot(x, 6)), expected)
    torch.testing.assert_close(model.token_mass(x), logits.softmax(-1).sum((0, 1)))


def test_a_token_changes_only_the_predictions_after_it():
    model = _model()
    x = torch.randint(6, (1, 5), generator=torch.Generator().manual_seed(1))
    y = x.clone()
    y[0, 2] = (x[0, 2] + 1) % 6
    a, b = model.logits(x), model.logits(y)
    torch.testing.assert_close(a[:, :3], b[:, :3])  # positions 1..3 read tokens before the third
    assert not torch.allclose(a[:, 3:], b[:, 3:])


@pytest.mark.parametrize("temperature", [1.0, 0.4])
def test_cached_draws_are_the_argmax_of_the_tempered_logits_of_one_full_pass(temperature):
    model = _model()
    noise = model.noise(50, torch.Generator().manual_seed(2))
    tokens = model.draw(noise, temperature)
    torch.testing.assert_close(tokens, (model.logits(tokens) / temperature + noise).argmax(-1))


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_the_first_token_is_drawn_from_the_softmax_at_the_temperature(temperature):
    model, count = _model(), 40_000
    first = model.draw(model.noise(count, torch.Generator().manual_seed(3)), temperature)[:, 0]
    expected = (model.logits(torch.zeros(1, 5, dtype=torch.long))[0, 0] / temperature).softmax(-1).detach()
    share = torch.bincount(first, minlength=6).float() / count
    assert ((share - expected).abs() < 4 * (expected / count).sqrt() + 1e-3).all()


def test_rsample_is_the_draw_with_the_straight_through_gradient_of_the_tempered_softmax():
    """Forward: the one-hot rows of `draw`; backward: the gradient of soft = softmax((logits / T + g) / tau)
    given the drawn prefix (tau = 0.5)."""
    model, weights = _model(), torch.randn(4, 5, 6, generator=torch.Generator().manual_seed(4))
    noise = model.noise(4, torch.Generator().manual_seed(5))
    y = model.rsample(noise, 0.7)
    tokens = model.draw(noise, 0.7)
    assert torch.equal(y, one_hot(tokens, 6))
    (y * weights).sum().backward()
    ours = model.head.bias.grad.clone()
    model.zero_grad()
    ((model.logits(tokens) / 0.7 + noise) / 0.5).softmax(-1).mul(weights).sum().backward()
    torch.testing.assert_close(ours, model.head.bias.grad)
    assert ours.abs().sum() > 0


def test_stacked_seeds_under_vmap_equal_each_model_alone():
    models = [_model(seed=s) for s in range(3)]
    params, _ = stack_module_state(models)
    x = torch.randint(6, (3, 7, 5), generator=torch.Generator().manual_seed(6)).float()
    noise = torch.stack([models[0].noise(7, torch.Generator().manual_seed(7))] * 3)
    call = lambda op: vmap(lambda p, a: functional_call(models[0], p, (a,), {"op": op}))  # noqa: E731
    torch.testing.assert_close(call("nll")(params, x), torch.stack([m.nll(a) for m, a in zip(models, x)]))
    alone = torch.stack([m.rsample(e) for m, e in zip(models, noise)])
    torch.testing.assert_close(call("rsample")(params, noise), alone)


def test_the_penalty_reaches_the_hypernetwork_through_its_samples():
    """H read with detached parameters on Y = rsample(H(X)): a gradient on H's parameters can come through the
    straight-through token picks of Y alone."""
    target = _model()
    hyper = HyperNetwork(target, 6)
    x = torch.randint(6, (16, 5), generator=torch.Generator().manual_seed(8)).float()
    y = hyper.run_target(hyper(x), target.noise(16, torch.Generator().manual_seed(9)), op="rsample")
    frozen = {name: p.detach() for name, p in hyper.named_parameters()}
    sum(t.square().sum() for t in functional_call(hyper, frozen, (y,)).values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in hyper.encoder.parameters())


def test_hypernetworks_read_which_tokens_a_sequence_holds():
    model = _model()
    x = torch.tensor([[0, 0, 5, 1, 0]])
    assert model.summary_features(x).tolist() == [[1.0, 1.0, 0.0, 0.0, 0.0, 1.0]]
    assert torch.equal(model.summary_features(one_hot(x, 6)), model.summary_features(x))


def test_presets():
    assert {"small", "gpu"} <= set(PRESETS)
    small = sum(p.numel() for p in Transformer(32, 16, PRESETS["small"]).parameters())
    gpu = sum(p.numel() for p in Transformer(32, 16, PRESETS["gpu"]).parameters())
    assert small < 30_000 and gpu > 10_000_000
    with pytest.raises(ValueError, match="width 10 is not a multiple of heads 3"):
        Transformer(8, 4, TransformerConfig(width=10, heads=3))


# --- corpora ----------------------------------------------------------------------------------------------------

def test_the_rare_tokens_are_the_rarest_tenth_and_ties_go_to_the_lower_id():
    assert MarkovCorpus(_source(), 16).rare.tolist() == [28, 29, 30, 31]  # ceil(3.2) of decreasing mu
    text = TextCorpus(torch.tensor([0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]), 11, 2)
    assert text.rare.tolist() == [2, 3]  # 2 .. 10 appear once each


@pytest.mark.parametrize("corpus", [MarkovCorpus(_source(vocab=8), 6),
                                    TextCorpus(torch.randint(8, (3000,), generator=torch.Generator().manual_seed(0)),
                                               8, 6)], ids=["markov", "text"])
def test_tilted_corpora_hold_the_share_of_rare_tokens_they_state(corpus):
    """share() of the corpus and of its tilt by 0.5 and 2 against 40,000 drawn sequences (4 SE)."""
    shares = []
    for factor in (0.5, 1.0, 2.0):
        tilted = corpus.tilted(corpus.rare, factor)
        drawn = torch.isin(tilted.draw(40_000, torch.Generator().manual_seed(1)), corpus.rare).double().mean(1)
        assert abs(float(drawn.mean()) - tilted.share(corpus.rare)) < 4 * float(drawn.std()) / 200
        shares.append(tilted.share(corpus.rare))
    assert shares[0] < shares[1] < shares[2] and shares[1] == pytest.approx(corpus.share(corpus.rare))


def _write_text(folder, files: dict[str, bytes | str]):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_bytes(text if isinstance(text, bytes) else text.encode())


def test_the_text_reader_keeps_the_most_frequent_tokens_of_the_training_part(tmp_path):
    _write_text(tmp_path, {"a.txt": "b b b a a c\n", "b.txt": "d d b z", "notes.md": "ignored"})
    text = read_text(tmp_path, TextParams(vocab=3, test_fraction=0.2), length=2)
    assert [f.name for f in text.files] == ["a.txt", "b.txt"]
    assert text.words == ["b", "a", UNKNOWN]  # of the first 8 tokens: b x3, then a and d x2 (a first), c
    assert text.train.stream.tolist() == [0, 0, 0, 1, 1, 2, 2, 2] and text.heldout.stream.tolist() == [0, 2]
    chars = read_text(tmp_path, TextParams(tokenizer="char", vocab=100, test_fraction=0.5), length=2)
    assert chars.words == [" ", "b", "a", UNKNOWN]  # the first 10 characters, "b b b a a "


def test_text_that_cannot_be_used_stops_with_one_line(tmp_path):
    with pytest.raises(InputUnavailableError, match="holds no .txt files; put UTF-8 text there"):
        read_text(tmp_path, TextParams(), length=4)
    _write_text(tmp_path, {"a.txt": "caf\xe9".encode("latin-1")})
    with pytest.raises(InputUnavailableError, match=r"a.txt: not UTF-8 text \(byte 3\)"):
        read_text(tmp_path, TextParams(), length=4)
    _write_text(tmp_path, {"a.txt": "one two three four five"})
    with pytest.raises(ParamsError, match="the 5 word tokens .* leave fewer than language.length = 4"):
        read_text(tmp_path, TextParams(), length=4)


# --- metrics ----------------------------------------------------------------------------------------------------

def test_perplexity_and_its_standard_error():
    log_probs = torch.log(torch.tensor([[[0.5, 0.5], [0.25, 0.25]]], dtype=torch.float64))  # S = 1, M = 2, L = 2
    value, se = metrics.perplexity(log_probs)
    c = torch.tensor([math.log(2), math.log(4)], dtype=torch.float64)
    assert float(value) == pytest.approx(math.exp(c.mean())) and float(se) == pytest.approx(
        math.exp(c.mean()) * float(c.std()) / math.sqrt(2))


def test_kl_tail_mass_and_distinct_n():
    p = torch.tensor([0.5, 0.25, 0.25, 0.0], dtype=torch.float64)
    q = torch.tensor([[0.5, 0.25, 0.25, 0.0], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    torch.testing.assert_close(metrics.kl(p, q), torch.tensor([0.0, 0.5 * math.log(2)], dtype=torch.float64))
    tail = metrics.tail_mass(q, torch.tensor([2, 3]))
    torch.testing.assert_close(tail, torch.tensor([0.25, 0.5], dtype=torch.float64))
    samples = torch.tensor([[[0, 1, 0, 1], [0, 1, 2, 2]]])  # bigrams 01 10 01 | 01 12 22
    assert metrics.distinct(samples, 1, 4).tolist() == [3 / 8] and metrics.distinct(samples, 2, 4).tolist() == [4 / 6]


def test_per_seed_log_probabilities_and_unigrams_in_chunks_equal_each_model_alone(monkeypatch):
    """With chunks of 4 sequences (9 = 4 + 4 + 1): log q_s(x_t | x_<t) of shared sequences, and q_s averaged
    over each seed's own samples."""
    monkeypatch.setattr(metrics, "CHUNK_VALUES", 2 * 4 * 5 * 6)
    models = [_model(seed=s) for s in range(2)]
    weights = {k: v.detach() for k, v in stack_module_state(models)[0].items()}
    samples = torch.randint(6, (2, 9, 5), generator=torch.Generator().manual_seed(10))
    q = metrics.model_unigram(models[0], weights, samples)
    log_probs = metrics.token_log_probs(models[0], weights, samples[0])
    for model, x, row, lp in zip(models, samples, q, log_probs):
        close = dict(rtol=1e-5, atol=1e-6)  # float32, batched or not
        torch.testing.assert_close(row, model.logits(x).softmax(-1).mean((0, 1)).double().detach(), **close)
        torch.testing.assert_close(lp, model.token_log_probs(samples[0]).double().detach(), **close)
    assert torch.allclose(q.sum(1), torch.ones(2, dtype=torch.float64))


# --- the study --------------------------------------------------------------------------------------------------

def _study(tmp_path, **language):
    section = {"seeds": 2, "generations": 2, "n_samples": 1024, "eval_sequences": 256, **language}
    return spec("language").studies(load_params(write_params(tmp_path, language=section)), tmp_path)[0]


def test_generation_0_model_has_lower_true_perplexity_than_a_unigram_baseline(tmp_path):
    """mle on D_0 (1024 sequences of 12 tokens, 200 steps): below exp(H(mu)), the perplexity of the best unigram
    model (the true mu), and not below the source's floor exp(H_L) beyond 3 SE."""
    study = _study(tmp_path)
    model = study.fit(real_dataset(study.draw_real(study.n_samples, generator(0, "real", 0))), "mle",
                      generator(0, "fit", "mle", 0))
    values = study.evaluate(model, None)
    unigram = math.exp(float(entropy(study.corpus.unigram)))
    assert (values["perplexity"] < 0.6 * unigram).all(), (values["perplexity"], unigram)
    assert (values["perplexity"] > study.corpus.floor - 3 * values["perplexity_mc_se"]).all()
    assert (values["kl_unigram"] < 0.05).all() and set(values) == {
        "perplexity", "perplexity_mc_se", "kl_unigram", "tail_mass", "distinct_1", "distinct_2"}


def test_probes_tilt_the_rare_tokens_and_are_valued_at_their_share(tmp_path):
    study = _study(tmp_path, n_samples=200)
    probes = study.probes()
    values = probes.values["tail_mass"]
    assert len(values) == len(PROBE_FACTORS) and values[0] < values[1] < values[2]
    assert values[1] == pytest.approx(study.corpus.share(study.rare))
    drawn = [float(torch.isin(x, study.rare).double().mean()) for x in probes.datasets]
    assert drawn[0] < drawn[1] < drawn[2] and all(d.shape == (2, 200, study.params.length) for d in probes.datasets)


def test_sampling_bias_is_the_temperature_of_the_loops_samples(tmp_path):
    """At T = 0.3 the samples of the same model keep fewer distinct token pairs than at T = 1."""
    study = _study(tmp_path, n_samples=64)
    model = study.fit(real_dataset(study.draw_real(64, generator(0, "real", 0))), "mle", generator(0, "fit", "mle", 0))
    hot, cold = (study.sample(model, 2000, t, generator(0, "sample", "mle", 1)) for t in (1.0, 0.3))
    assert hot.dtype == torch.int64 and hot.shape == (2, 2000, study.params.length)
    assert (metrics.distinct(cold, 2, 32) < 0.7 * metrics.distinct(hot, 2, 32)).all()


BAD = [
    ({"loop": {"sampling_bias": 0.0}}, "loop.sampling_bias = 0.0 is invalid: Input should be greater than 0"),
    ({"loop": {"sampling_bias": -0.5}}, "loop.sampling_bias = -0.5"),
    ({"language": {"length": 1}}, "language.length = 1"),
    ({"language": {"n_samples": 1}}, "language.n_samples = 1"),
    ({"language": {"eval_sequences": 5}}, "language.eval_sequences = 5"),
    ({"language": {"preset": "huge"}}, "preset 'huge' is not one of the transformer presets: small, gpu"),
    ({"language": {"source": {"vocab": 1}}}, "language.source.vocab = 1"),
    ({"language": {"source": {"zipf": 0.0}}}, "language.source.zipf = 0.0"),
    ({"language": {"source": {"strength": float("nan")}}}, "language.source.strength = nan"),
    ({"language": {"text": {"tokenizer": "bpe"}}}, "language.text.tokenizer = 'bpe'"),
    ({"language": {"ple": {"concentration": 0.0}}}, "language.ple.concentration = 0.0"),
    ({"language": {"temperature": 0.5}}, "unknown key 'language.temperature'"),
]


@pytest.mark.parametrize("override,expected", BAD, ids=[str(o) for o, _ in BAD])
def test_bad_values_stop_with_one_line_exit_2_and_nothing_written(tmp_path, monkeypatch, capsys, override, expected):
    path = write_params(tmp_path / "in", **override)
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    assert main(study_flow, ["language"], ["language", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {path}:") and expected in err
    assert sorted(tmp_path.rglob("*")) == before


def test_the_text_study_without_text_files_stops_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert not spec("language_text").default(tmp_path) and spec("language").default(tmp_path)
    assert main(study_flow, ["language_text"], ["language_text", str(ROOT / "params.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data/raw/text holds no .txt files" in err
    assert list(tmp_path.iterdir()) == []


TINY = {"seeds": 2, "generations": 2, "n_samples": 64, "eval_sequences": 32, "length": 8,
        "ple": {"lam": 1.0, "penalty": "mean", "steps": 5, "batch_fraction": 0.25}}


def test_the_flow_runs_every_method_and_stores_token_ids(tmp_path, prefect_api):
    params = write_params(tmp_path, language=TINY)
    tidy = study_flow(study="language", params_file=str(params), root=str(tmp_path))
    by_method = tidy.groupby("method").metric.unique()
    assert set(by_method.index) == {"mle", "hyper_mle", "ple"}
    assert {"perplexity", "perplexity_mc_se", "kl_unigram", "tail_mass", "distinct_1", "distinct_2"} <= set(
        by_method["mle"]) and "response" not in by_method["mle"]
    assert {"response", "response_slope_mle", "fit_loss", "penalty"} <= set(by_method["ple"])
    summary = json.loads((tmp_path / "metrics/language/summary.json").read_text())
    assert summary["generation"] == 1 and "response_slope_mle_mean" in summary["ple"]
    stored = storage.read_dataset(tmp_path / "data/generations/language/mle/gen_001.parquet").values
    assert stored.dtype == torch.int64 and stored.shape == (2, 64, 8) and 0 <= stored.min() and stored.max() < 32
    for name, panels in (("curves.png", 2), ("diversity.png", 3)):
        assert colour(figure_pixels(tmp_path / "figures/language" / name, (5.2 * panels, 4))) > 0.003
    again = study_flow(study="language", params_file=str(params), root=str(tmp_path / "again"))
    pd.testing.assert_frame_equal(tidy.reset_index(drop=True), again.reset_index(drop=True))  # same seed, same numbers


def test_the_text_study_runs_on_text_files_when_present(tmp_path, prefect_api):
    words = np.random.default_rng(0).zipf(1.5, 6000) % 300
    _write_text(tmp_path / "data/raw/text", {"train.txt": " ".join(f"w{w}" for w in words)})
    assert spec("language_text").default(tmp_path)
    params = write_params(tmp_path, language={**TINY, "text": {"vocab": 100}})
    tidy = study_flow(study="language_text", params_file=str(params), root=str(tmp_path))
    assert set(tidy.method) == {"mle", "hyper_mle", "ple"} and (tmp_path / "figures/language_text/curves.png").exists()
    perplexity = tidy[(tidy.metric == "perplexity") & (tidy.generation == 0)].value
    assert (perplexity < 100).all()  # held-out perplexity below the vocabulary's uniform guess

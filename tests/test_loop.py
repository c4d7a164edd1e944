"""The loop modes of docs/loop.md, on small tensors where every point can be traced."""

from __future__ import annotations

import pytest
import torch

from flows.study import study_flow
from tasks import loop
from tasks.infra import storage
from tasks.infra.paths import StudyPaths
from tasks.studies import load_params, spec

from conftest import write_params


def _data(values: torch.Tensor, real: bool) -> loop.Dataset:
    return loop.real_dataset(values) if real else loop.synthetic_dataset(values)


@pytest.fixture
def parts():
    seeds, n = 3, 10
    real0 = _data(torch.arange(seeds * n, dtype=torch.float64).reshape(seeds, n), real=True)
    previous = _data(torch.full((seeds, 12), -1.0, dtype=torch.float64), real=False)
    return real0, previous


def _next(mode, real0, previous, real_fraction=0.3, seed=0, real_points=None):
    n_real, n_synth = loop.split_counts(mode, len(real0), real_fraction, real_points)
    synthetic = torch.full((real0.values.shape[0], n_synth), 99.0, dtype=torch.float64)
    fresh = lambda n: torch.full((real0.values.shape[0], n), 7.0, dtype=torch.float64)  # noqa: E731
    real = loop.real_part(mode, real0, n_real, fresh, loop.generator(seed, "augment"))
    return loop.next_dataset(mode, previous, real, synthetic)


def test_replace_is_only_the_new_samples(parts):
    out = _next("replace", *parts)
    assert len(out) == 10 and (out.values == 99).all() and not out.is_real.any()


def test_accumulate_keeps_everything_before(parts):
    real0, previous = parts
    out = _next("accumulate", real0, previous)
    assert len(out) == len(previous) + 10
    assert torch.equal(out.values[:, : len(previous)], previous.values)
    assert (out.values[:, len(previous):] == 99).all()


def test_augment_mixes_a_subset_of_the_real_data(parts):
    real0, previous = parts
    out = _next("augment", real0, previous, real_fraction=0.3)
    assert len(out) == 10 and int(out.is_real.sum()) == 3
    kept = out.values[:, out.is_real]
    for s in range(kept.shape[0]):  # every real point comes from that seed's D_0, without repeats
        assert set(kept[s].tolist()) <= set(real0.values[s].tolist()) and len(set(kept[s].tolist())) == 3
    assert (out.values[:, ~out.is_real] == 99).all()


def test_augment_subset_changes_between_generations(parts):
    real0, previous = parts
    picks = {tuple(_next("augment", real0, previous, 0.5, seed=s).values[0, :5].tolist()) for s in range(6)}
    assert len(picks) > 1



def test_augment_subset_depends_on_the_generation_seed_alone(parts):
    """Same (seed, generation) key, same subset, whatever torch's global random state."""
    picks = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        picks.append(_next("augment", *parts, 0.5, seed=3).values)
    assert torch.equal(*picks)


def test_fresh_draws_new_real_points(parts):
    out = _next("fresh", *parts, real_fraction=0.5)
    assert int(out.is_real.sum()) == 5 and (out.values[:, out.is_real] == 7).all()


@pytest.mark.parametrize("mode", ["augment", "fresh"])
def test_real_points_are_an_amount_beside_n_synthetic_points(parts, mode):
    out = _next(mode, *parts, real_fraction=0.5, real_points=4)
    assert len(out) == 14 and int(out.is_real.sum()) == 4 and (out.values[:, ~out.is_real] == 99).all()


def test_accumulate_subsample_stores_the_pool(parts):
    real0, previous = parts
    assert torch.equal(_next("accumulate_subsample", real0, previous).values, _next("accumulate", *parts).values)


def test_accumulate_subsample_fits_n_points_of_the_pool_drawn_uniformly():
    """Each fit sees n distinct points of the pool, in pool order; over many draws every point is picked with
    probability n / |pool| (binomial SE tolerance)."""
    seeds, n, pool_size, draws = 2, 10, 40, 2000
    pool = loop.Dataset(torch.arange(seeds * pool_size, dtype=torch.float64).reshape(seeds, pool_size),
                        torch.arange(pool_size) < n)
    counts = torch.zeros(pool_size)
    for k in range(draws):
        train = loop.training_data("accumulate_subsample", pool, n, loop.generator(0, "subsample", "mle", k))
        assert len(train) == n and torch.equal(train.is_real, pool.is_real[train.values[0].long()])
        assert (train.values[:, 1:] > train.values[:, :-1]).all()  # distinct, in pool order
        assert torch.equal(train.values[1] - train.values[0], torch.full((n,), float(pool_size), dtype=torch.float64))
        counts[train.values[0].long()] += 1
    p = n / pool_size
    assert ((counts / draws - p).abs() < 4 * (p * (1 - p) / draws) ** 0.5).all()
    for mode in ("replace", "accumulate", "augment", "fresh"):
        assert loop.training_data(mode, pool, n, loop.generator(0)) is pool


@pytest.mark.parametrize("mode,fraction,points,expected", [
    ("replace", 0.7, None, (0, 10)), ("accumulate", 0.7, None, (0, 10)), ("accumulate_subsample", 0.7, 3, (0, 10)),
    ("augment", 0.0, None, (0, 10)), ("augment", 1.0, None, (10, 0)), ("fresh", 0.25, None, (2, 8)),
    ("fresh", 0.35, None, (4, 6)), ("fresh", 0.35, 3, (3, 10)), ("augment", 0.9, 0, (0, 10)),
    ("replace", 0.5, 3, (0, 10)),
])
def test_split_counts(mode, fraction, points, expected):
    assert loop.split_counts(mode, 10, fraction, points) == expected


def test_unknown_mode_is_rejected(parts):
    real0, previous = parts
    with pytest.raises(ValueError, match="unknown loop mode"):
        loop.next_dataset("circular", previous, None, real0.values)


def test_generators_depend_on_keys_only():
    a = torch.rand(5, generator=loop.generator(3, "sample", "mle", 4))
    b = torch.rand(5, generator=loop.generator(3, "sample", "mle", 4))
    c = torch.rand(5, generator=loop.generator(3, "sample", "ple", 4))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("mode,real_points", [("replace", None), ("accumulate", None),
                                              ("accumulate_subsample", None), ("augment", None), ("fresh", None),
                                              ("fresh", 6)])
def test_stored_generations_have_the_composition_of_their_mode(tmp_path, prefect_api, mode, real_points):
    """Through the flow: each stored D_g of the Gaussian study has the size and real share of its mode,
    its real points are D_0's (augment, without repeats) or new draws seen nowhere before (fresh), and
    accumulate keeps D_(g-1) as its prefix; under accumulate_subsample the stored pool grows like
    accumulate's and each model fits n points of it, which come from every earlier generation."""
    n, fraction, generations = 10, 0.4, 4
    n_real = round(fraction * n) if real_points is None else real_points
    params = write_params(tmp_path, seed=5, loop={"mode": mode, "real_fraction": fraction, "sampling_bias": 1.0,
                                                  "real_points": real_points},
                          gaussian={"n_samples": n, "generations": generations, "seeds": 3})
    study_flow(study="gaussian", params_file=str(params), root=str(tmp_path))
    folder = StudyPaths(tmp_path, "gaussian").method_dir("mle")
    stored = [storage.read_dataset(storage.dataset_path(folder, g)) for g in range(generations)]
    real0 = stored[0]
    assert len(real0) == n and real0.is_real.all()
    seen = {float(v) for v in real0.values.flatten()}
    for g in range(1, generations):
        data, previous = stored[g], stored[g - 1]
        real = data.values[:, data.is_real]
        if mode == "replace":
            assert len(data) == n and not data.is_real.any()
        elif mode.startswith("accumulate"):
            assert len(data) == (g + 1) * n and torch.equal(data.values[:, : len(previous)], previous.values)
            assert torch.equal(data.is_real[: len(previous)], previous.is_real) and not data.is_real[-n:].any()
        else:
            size = n if real_points is None else n_real + n
            assert len(data) == size and int(data.is_real.sum()) == n_real
            assert torch.equal(data.is_real, torch.arange(size) < n_real)  # real points first
        if mode == "augment":
            for s in range(real.shape[0]):
                own = set(real0.values[s].tolist())
                assert set(real[s].tolist()) <= own and len(set(real[s].tolist())) == real.shape[1]
        if mode == "fresh":
            values = {float(v) for v in real.flatten()}
            assert not values & seen, f"generation {g} reuses real points drawn before"
            seen |= values
        synthetic = data.values[:, ~data.is_real]
        assert not {float(v) for v in synthetic.flatten()} & {float(v) for v in real0.values.flatten()}
    if mode == "accumulate_subsample":
        _assert_fits_subsamples_of_every_generation(tmp_path, folder, stored, n)


def _assert_fits_subsamples_of_every_generation(root, folder, stored, n):
    """Model g's mu_hat is the mean of n points of the pool A_g drawn by key (seed, "subsample", method, g),
    and those draws, over seeds, take points of D_0 and of every S_k (k <= g)."""
    output = StudyPaths(root, "gaussian").generations
    mu_hat = {g: storage.read_record(storage.record_path(folder, g), output)["metrics"]["mu_hat"]
              for g in range(len(stored))}
    for g, pool in enumerate(stored):
        train = loop.training_data("accumulate_subsample", pool, n, loop.generator(5, "subsample", "mle", g))
        assert len(train) == n
        assert torch.allclose(train.values.mean(1).double(), torch.tensor(mu_hat[g], dtype=torch.float64), atol=1e-5)
        sources = {int(i) // n for s in range(pool.values.shape[0])
                   for i in torch.nonzero(torch.isin(pool.values[s], train.values[s])).flatten()}
        assert sources == set(range(g + 1)), (g, sources)


@pytest.mark.parametrize("curation", [{"kind": "verifier", "threshold": 0.4}, {"kind": "top_k", "keep": 0.25}],
                         ids=["verifier", "top_k"])
def test_curated_generations_hold_only_accepted_samples_and_log_the_kept_share(tmp_path, prefect_api, curation):
    """Through the flow, Gaussian study: every stored synthetic point passes the verifier (its density
    quantile is at least the threshold; top_k: at least the smallest kept score), and each generation
    but the last logs the share its samples kept (top_k: exactly n / ceil(n / keep) = 0.25)."""
    n, generations = 10, 3
    params = write_params(tmp_path, seed=5, loop={"mode": "replace", "curation": curation},
                          gaussian={"n_samples": n, "generations": generations, "seeds": 3})
    tidy = study_flow(study="gaussian", params_file=str(params), root=str(tmp_path))
    (study,) = spec("gaussian").studies(load_params(params), tmp_path)
    folder = StudyPaths(tmp_path, "gaussian").method_dir("mle")
    scores = [study.verify(storage.read_dataset(storage.dataset_path(folder, g)).values).score
              for g in range(1, generations)]
    if curation["kind"] == "verifier":
        assert all((score >= 0.4).all() for score in scores)
    kept = tidy[(tidy.method == "mle") & (tidy.metric == "kept_share")]
    assert sorted(kept.generation.unique()) == list(range(generations - 1))
    assert kept.value.between(0, 1, inclusive="right").all()
    if curation["kind"] == "top_k":
        assert (kept.value == 0.25).all()
    else:  # it rejects some (rounds of n = 10 candidates: shares are multiples of 1/10 per round)
        assert (kept.value < 1).any()
    by_group = tidy[(tidy.method == "mle") & (tidy.metric == "kept_share_all")].value.to_numpy()
    assert (by_group == kept.value.to_numpy()).all()

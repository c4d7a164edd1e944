"""The loop modes of docs/loop.md, on small tensors where every point can be traced."""

from __future__ import annotations

import pytest
import torch

from flows.study import study_flow
from tasks import loop
from tasks.infra import storage
from tasks.infra.paths import StudyPaths

from conftest import write_params


def _data(values: torch.Tensor, real: bool) -> loop.Dataset:
    return loop.real_dataset(values) if real else loop.synthetic_dataset(values)


@pytest.fixture
def parts():
    seeds, n = 3, 10
    real0 = _data(torch.arange(seeds * n, dtype=torch.float64).reshape(seeds, n), real=True)
    previous = _data(torch.full((seeds, 12), -1.0, dtype=torch.float64), real=False)
    return real0, previous


def _next(mode, real0, previous, real_fraction=0.3, seed=0):
    n_real, n_synth = loop.split_counts(mode, len(real0), real_fraction)
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


@pytest.mark.parametrize("mode,fraction,expected", [
    ("replace", 0.7, (0, 10)), ("accumulate", 0.7, (0, 10)), ("augment", 0.0, (0, 10)),
    ("augment", 1.0, (10, 0)), ("fresh", 0.25, (2, 8)), ("fresh", 0.35, (4, 6)),
])
def test_split_counts(mode, fraction, expected):
    assert loop.split_counts(mode, 10, fraction) == expected


def test_unknown_mode_is_rejected(parts):
    real0, previous = parts
    with pytest.raises(ValueError, match="unknown loop mode"):
        loop.next_dataset("circular", previous, None, real0.values)


def test_generators_depend_on_keys_only():
    a = torch.rand(5, generator=loop.generator(3, "sample", "mle", 4))
    b = torch.rand(5, generator=loop.generator(3, "sample", "mle", 4))
    c = torch.rand(5, generator=loop.generator(3, "sample", "ple", 4))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("mode", ["replace", "accumulate", "augment", "fresh"])
def test_stored_generations_have_the_composition_of_their_mode(tmp_path, prefect_api, mode):
    """Through the flow: each stored D_g of the Gaussian study has the size and real share of its mode,
    its real points are D_0's (augment, without repeats) or new draws seen nowhere before (fresh), and
    accumulate keeps D_(g-1) as its prefix."""
    n, fraction, generations = 10, 0.4, 4
    params = write_params(tmp_path, seed=5, loop={"mode": mode, "real_fraction": fraction, "sampling_bias": 1.0},
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
        elif mode == "accumulate":
            assert len(data) == (g + 1) * n and torch.equal(data.values[:, : len(previous)], previous.values)
            assert torch.equal(data.is_real[: len(previous)], previous.is_real) and not data.is_real[-n:].any()
        else:
            assert len(data) == n and int(data.is_real.sum()) == round(fraction * n)
            assert torch.equal(data.is_real, torch.arange(n) < round(fraction * n))  # real points first
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

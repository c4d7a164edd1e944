"""The biased attribute data: exact group counts, the rendering read back, the balanced test set, the rows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tasks.studies.fairness import attributes as ad
from tasks.studies.fairness.study import balancing_weights
from tasks.studies.images.data import load_images, split

DIGITS = load_images("digits", Path("unused"))


@pytest.mark.parametrize(("n", "bias", "expected"), [(400, 0.9, [180, 20, 20, 180]), (20, 0.9, [9, 1, 1, 9]),
                                                     (10, 0.5, [3, 2, 3, 2]), (7, 0.8, [3, 1, 1, 2])])
def test_group_counts_sum_to_n_at_the_bias(n, bias, expected):
    assert ad.group_counts(n, bias) == expected
    assert sum(ad.group_counts(n, bias)) == n


def test_biased_draw_has_exact_groups_and_the_attribute_reads_back():
    groups = ad.draw_biased(DIGITS, 5, 0.9, 400, torch.Generator().manual_seed(0))
    counts = torch.bincount(2 * groups.y + groups.s, minlength=4).tolist()
    assert counts == [180, 20, 20, 180]
    assert torch.equal(ad.attribute_of(groups.images), groups.s)
    assert set(groups.images.reshape(400, -1).mean(1, dtype=torch.float64).gt(127.5).tolist()) == {False, True}


def test_attribute_is_exact_on_every_real_digit_in_both_styles():
    for s in (0, 1):
        style = torch.full((len(DIGITS),), s)
        assert torch.equal(ad.attribute_of(ad.render(DIGITS.images, style)), style)


def test_inversion_is_an_involution():
    once = ad.render(DIGITS.images[:50], torch.ones(50, dtype=torch.long))
    assert torch.equal(ad.render(once, torch.ones(50, dtype=torch.long)), DIGITS.images[:50])
    assert torch.equal(once, 255 - DIGITS.images[:50])


def test_balanced_test_shows_each_image_in_both_styles_with_equal_groups():
    _, held_out = split(DIGITS, 0.3, torch.Generator().manual_seed(1))
    test = ad.balanced_test(held_out, 5, torch.Generator().manual_seed(2))
    counts = torch.bincount(2 * test.y + test.s, minlength=4)
    assert len(set(counts.tolist())) == 1 and counts[0] > 200
    half = len(test.y) // 2
    assert torch.equal(test.images[half:], 255 - test.images[:half])
    assert torch.equal(test.y[half:], test.y[:half])


def test_too_large_a_draw_names_the_fix():
    with pytest.raises(ValueError, match="use a smaller n_samples"):
        ad.draw_biased(DIGITS, 5, 0.9, 2000, torch.Generator())


def test_rows_round_trip_and_the_generator_view():
    groups = ad.draw_biased(DIGITS, 5, 0.9, 40, torch.Generator().manual_seed(3))
    rows = ad.to_rows(groups)
    assert rows.shape == (40, 65) and rows.dtype == torch.uint8
    images, y = ad.split_rows(rows, (8, 8))
    assert torch.equal(images, groups.images) and torch.equal(y, groups.y)
    x = ad.rows_to_float(rows)
    assert x[:, :-1].max() <= 1 and torch.equal(x[:, -1], groups.y.float())
    assert torch.equal(ad.rows_to_uint8(x), rows)


def test_group_shares_and_balancing_weights():
    rows = torch.stack([ad.to_rows(ad.draw_biased(DIGITS, 5, 0.9, 400, torch.Generator().manual_seed(i)))
                        for i in range(2)])
    assert torch.allclose(ad.group_shares(rows, (8, 8)), torch.tensor([[0.45, 0.05, 0.05, 0.45]] * 2,
                                                                       dtype=torch.float64))
    weights = balancing_weights(rows, (8, 8))
    assert weights.shape == (2, 400) and torch.allclose(weights.mean(1), torch.ones(2))
    images, y = ad.split_rows(rows[0], (8, 8))
    group = 2 * y + ad.attribute_of(images)
    totals = torch.stack([weights[0][group == g].sum() for g in range(4)])
    assert torch.allclose(totals, totals[0].expand(4), rtol=1e-5)  # every group weighs the same in all

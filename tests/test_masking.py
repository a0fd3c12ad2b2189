"""The masking helpers SGT training uses: exactly k lowest positions, all channels, fills in range."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sgtool.saliency import apply_mask, fill_values, mask_lowest, position_score, rank_mask


@settings(max_examples=30, deadline=None)
@given(b=st.integers(1, 4), c=st.integers(1, 3), h=st.integers(2, 6), frac=st.floats(0.0, 0.99), seed=st.integers(0, 99))
def test_exactly_k_lowest_positions_masked_in_every_channel(b, c, h, frac, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, h, h, generator=g)
    score = torch.randperm(b * h * h, generator=g).float().view(b, h, h)  # distinct scores: no ties
    k = int(frac * h * h)
    mask = rank_mask(score, k, largest=False)
    assert mask.shape == (b, 1, h, h)
    assert (mask.sum(dim=(1, 2, 3)) == k).all()
    if 0 < k < h * h:
        # Every masked position scores below every kept position, sample by sample.
        flat, m = score.view(b, -1), mask.view(b, -1)
        assert (flat.masked_fill(~m, -1).amax(1) < flat.masked_fill(m, float("inf")).amin(1)).all()
    xm = mask_lowest(x, score, k, "zero")
    changed = (xm != x).view(b, c, -1)
    assert (changed.any(1) <= mask.view(b, -1)).all()  # nothing outside the mask changes
    assert ((xm == 0) | ~mask).all()  # all channels of masked positions are filled


@pytest.mark.parametrize("fill", ["random", "mean", "zero", "background", "blur"])
def test_fills_stay_in_image_range(fill):
    x = 0.2 + 0.5 * torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    v = fill_values(x, fill, torch.Generator().manual_seed(1))
    assert v.shape == x.shape
    if fill == "zero":
        assert (v == 0).all()
    else:
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        assert ((v >= lo - 1e-6) & (v <= hi + 1e-6)).all()


def test_random_fill_is_per_value_and_seeded():
    x = torch.rand(2, 1, 6, 6)
    a = fill_values(x, "random", torch.Generator().manual_seed(3))
    b = fill_values(x, "random", torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.unique().numel() > 60


def test_mean_fill_is_per_channel():
    x = torch.stack([torch.zeros(4, 4), torch.ones(4, 4)])[None]  # (1, 2, 4, 4)
    assert torch.equal(fill_values(x, "mean", None)[0, :, 0, 0], torch.tensor([0.0, 1.0]))


def test_position_score_averages_channels():
    attr = torch.tensor([[[[1.0]], [[-3.0]]]])  # (1, 2, 1, 1)
    assert position_score(attr, "abs").item() == 2.0
    assert position_score(attr, "signed").item() == -1.0


def test_apply_mask_keeps_unmasked():
    x = torch.rand(2, 3, 4, 4)
    mask = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    assert torch.equal(apply_mask(x, mask, "zero"), x)

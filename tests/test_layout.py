"""The layouts (what a feature is): per layout, exactly k = floor(frac x valid features) features
masked per sample and they are the lowest-scoring; padding is never masked or ranked; the fills
stay in range."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sgtool.errors import UsageError
from sgtool.layout import (
    IMAGE_FILLS,
    LAYOUTS,
    SERIES_FILLS,
    TOKEN_FILLS,
    get_fill,
    lowest_k,
    mask,
    n_masked,
    removal_rank,
)
from tests.toys import ToyTokens


def _case(layout, b, n1, n2, padded, g):
    """(x, valid features (B, N) or None, the layout's batch) for a random batch of `layout`."""
    lay = LAYOUTS[layout]
    if layout == "image":
        x = torch.rand(b, 2, n1, n2, generator=g)
        return x, None, lay.batch(None, x)
    if layout == "series":
        x = torch.rand(b, n1, n2, generator=g)
        steps = None
        if padded:
            lengths = torch.randint(1, n1 + 1, (b,), generator=g)
            steps = torch.arange(n1)[None] < lengths[:, None]  # (B, T)
        bt = lay.batch(None, x, steps)
        return x, bt.valid, bt
    model = ToyTokens(vocab=12, dim=3, length=n1)
    ids = torch.randint(2, 12, (b, n1), generator=g)
    lengths = torch.randint(1, n1 + 1, (b,), generator=g) if padded else torch.full((b,), n1)
    ids[torch.arange(n1)[None] >= lengths[:, None]] = 0  # padding at the end
    bt = lay.batch(model, ids)
    return ids, bt.valid, bt


@settings(max_examples=40, deadline=None)
@given(layout=st.sampled_from(["image", "series", "tokens"]), b=st.integers(1, 4), n1=st.integers(2, 6),
       n2=st.integers(1, 5), frac=st.floats(0.0, 0.99), padded=st.booleans(), seed=st.integers(0, 99))
def test_exactly_k_lowest_valid_features_are_masked(layout, b, n1, n2, frac, padded, seed):
    g = torch.Generator().manual_seed(seed)
    x, valid, bt = _case(layout, b, n1, n2, padded, g)
    n = bt.inp.shape[1] if layout == "tokens" else LAYOUTS[layout].n_features(x.shape[1:])
    score = torch.randperm(b * n, generator=g).float().view(b, n)  # distinct: no ties
    m = lowest_k(score, frac, valid)
    nvalid = torch.full((b,), n) if valid is None else valid.sum(1)
    assert torch.equal(m.sum(1), n_masked(frac, nvalid))  # exactly k per sample
    if valid is not None:
        assert not (m & ~valid).any()  # padding is never masked
        v = valid
    else:
        v = torch.ones_like(m)
    # every masked feature scores below every kept valid feature, sample by sample
    top_masked = score.masked_fill(~m, -1).amax(1)
    low_kept = score.masked_fill(m | ~v, float("inf")).amin(1)
    assert (top_masked < low_kept).all()
    # the mask-eval ranking puts padding last, and ranks the valid features best first
    rank = removal_rank(score, valid)
    assert ((rank >= nvalid[:, None]) | v).all()  # padding ranks after every valid feature
    for i in range(b):
        order = rank[i][v[i]].argsort()
        assert torch.equal(score[i][v[i]][order], score[i][v[i]].sort(descending=True).values)


def test_removal_rank_breaks_ties_at_random_when_asked_and_is_seeded():
    score = torch.zeros(3, 50)  # all tied
    by_index = removal_rank(score)
    assert torch.equal(by_index, torch.arange(50).expand(3, 50))  # 0.1's rule: flat index
    a = removal_rank(score, generator=torch.Generator().manual_seed(1))
    b = removal_rank(score, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, by_index)
    assert torch.equal(a.sort(1).values, by_index)  # still a permutation
    # random tie-breaking never reorders distinct scores
    s = torch.tensor([[3.0, 1.0, 3.0, 2.0]])
    r = removal_rank(s, generator=torch.Generator().manual_seed(0))
    assert set(r[0, [0, 2]].tolist()) == {0, 1} and r[0, 3] == 2 and r[0, 1] == 3


@pytest.mark.parametrize("fill", sorted(IMAGE_FILLS))
def test_image_fills_stay_in_range(fill):
    x = 0.2 + 0.5 * torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    v = IMAGE_FILLS[fill](x, None, torch.Generator().manual_seed(1), {})
    assert v.shape == x.shape
    if fill == "zero":
        assert (v == 0).all()
    else:
        lo, hi = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
        assert ((v >= lo - 1e-6) & (v <= hi + 1e-6)).all()


def test_image_mask_changes_every_channel_of_masked_positions_only():
    x = torch.rand(2, 3, 4, 4)
    m = torch.zeros(2, 16, dtype=torch.bool)
    m[0, 5] = m[1, 0] = True
    out = mask("image", x, m, "zero")
    assert (out[0, :, 1, 1] == 0).all() and (out[1, :, 0, 0] == 0).all()
    assert ((out != x).flatten(2).any(1) <= m).all()


@pytest.mark.parametrize("fill", ["random", "mean", "zero", "background"])
def test_series_fills_stay_in_the_valid_range_and_padding_is_untouched(fill):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 6, 2, generator=g) + 1.0  # values in [1, 2)
    steps = torch.arange(6)[None] < torch.tensor([6, 4, 2])[:, None]
    x[~steps] = 0.0  # padded steps hold 0
    bt = LAYOUTS["series"].batch(None, x, steps)
    m = lowest_k(torch.rand(3, 12, generator=g), 0.5, bt.valid)
    ctx = {"valid": bt.valid, "background": lambda n, gen: 1.5 + 0 * torch.rand(n, 6, 2, generator=gen)}
    out = mask("series", x, m, fill, torch.Generator().manual_seed(1), ctx)
    assert torch.equal(out[~steps], x[~steps])  # padding never changes
    changed = out[steps]
    if fill == "zero":
        assert (out[m.view(3, 6, 2)] == 0).all()
    else:  # the fill values come from the valid cells' range [1, 2), never from the padding's 0
        assert ((changed >= 1.0) & (changed < 2.0)).all()
    if fill == "mean":
        want = (x * steps[..., None]).sum(1) / steps.sum(1, keepdim=True)  # (B, F)
        got = SERIES_FILLS["mean"](x, None, None, ctx)
        torch.testing.assert_close(got[:, 0], want)


def test_series_background_without_a_process_is_one_line():
    x = torch.rand(2, 4, 3)
    with pytest.raises(UsageError, match="fill 'background' needs a dataset with a background process"):
        mask("series", x, torch.ones(2, 12, dtype=torch.bool), "background", ctx={})


def test_previous_salient_takes_the_nearest_kept_token_before_else_after():
    model = ToyTokens(length=6)
    ids = torch.tensor([[5, 6, 7, 8, 9, 0]])  # the last token is padding
    bt = LAYOUTS["tokens"].batch(model, ids)
    e = bt.inp
    m = torch.tensor([[True, False, True, True, False, False]])  # mask tokens 0, 2, 3
    out = mask("tokens", e, m, "previous-salient", ctx={"model": model, "valid": bt.valid})
    # token 0 has nothing kept before it: it takes token 1; tokens 2 and 3 take token 1 too
    for i, src in [(0, 1), (1, 1), (2, 1), (3, 1), (4, 4), (5, 5)]:
        assert torch.equal(out[0, i], e[0, src]), i


def test_previous_salient_never_copies_the_query_or_padding():
    model = ToyTokens(length=6)
    ids = torch.tensor([[5, 6, 7, 8, 9, 0]])
    valid = torch.tensor([[False, False, True, True, True, False]])  # tokens 0-1 are the query
    bt = LAYOUTS["tokens"].batch(model, ids, valid)
    m = torch.tensor([[False, False, True, False, True, False]])
    out = mask("tokens", bt.inp, m, "previous-salient", ctx={"model": model, "valid": bt.valid})
    assert torch.equal(out[0, 2], bt.inp[0, 3])  # not the query's token 1: the next kept document token
    assert torch.equal(out[0, 4], bt.inp[0, 3])
    assert torch.equal(out[0, :2], bt.inp[0, :2]) and torch.equal(out[0, 5], bt.inp[0, 5])


@pytest.mark.parametrize("fill", sorted(TOKEN_FILLS))
def test_token_fills(fill):
    model = ToyTokens(vocab=12, length=6)
    ids = torch.tensor([[5, 6, 7, 0, 0, 0], [2, 3, 4, 5, 6, 7]])
    bt = LAYOUTS["tokens"].batch(model, ids)
    v = get_fill("tokens", fill)(bt.inp, None if fill != "previous-salient" else torch.zeros(2, 6, 1, dtype=bool),
                                 torch.Generator().manual_seed(0), {"model": model, "valid": bt.valid})
    assert v.shape == bt.inp.shape
    if fill == "zero":
        assert (v == 0).all()
    elif fill == "unk":
        assert torch.equal(v, model.embed(torch.full((2, 6), model.unk_id)))
    elif fill == "random-token":  # real words only: never <pad> or <unk>
        table = model.emb.weight
        hits = (v[..., None, :] == table).all(-1)  # (B, L, vocab)
        assert hits.any(-1).all() and not hits[..., :2].any()


def test_unknown_fill_and_reduction_list_the_layouts_choices():
    with pytest.raises(UsageError, match="unknown tokens fill 'random'; choose from: previous-salient"):
        get_fill("tokens", "random")
    with pytest.raises(UsageError, match="unknown series saliency reduction 'l2'; choose from: abs, signed"):
        LAYOUTS["series"].score(torch.zeros(1, 2, 2), None, "l2")


def test_token_scores_reduce_the_embedding_dimension():
    attr = torch.tensor([[[1.0, -2.0], [3.0, 4.0]]])  # (1, L=2, D=2)
    inp = torch.tensor([[[2.0, 1.0], [0.5, -1.0]]])
    lay = LAYOUTS["tokens"]
    assert lay.score(attr, inp, "sum").tolist() == [[-1.0, 7.0]]
    assert lay.score(attr, inp, "abs-sum").tolist() == [[3.0, 7.0]]
    assert lay.score(attr, inp, "l2")[0, 1].item() == pytest.approx(5.0)
    assert lay.score(attr, inp, "grad-x-input").tolist() == [[0.0, -2.5]]


def test_image_scores_reduce_channels_three_ways():
    attr = torch.tensor([[[[1.0]], [[-3.0]]]])  # (1, 2, 1, 1)
    lay = LAYOUTS["image"]
    assert lay.score(attr, attr, "abs").item() == 2.0  # mean of |g| (sgtool's default)
    assert lay.score(attr, attr, "signed").item() == -1.0
    assert lay.score(attr, attr, "abs-mean").item() == 1.0  # |mean g| (the authors' mask-eval rule)

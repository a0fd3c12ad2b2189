"""What a "feature" is, for each kind of input: how an attribution becomes one score per
feature, which features are valid, and how chosen features are replaced by a fill.

    image   x (B, C, H, W)  a feature is an (h, w) position; the channel dim is reduced.
    series  x (B, T, F)     a feature is one (t, f) cell; nothing is reduced. Series of unequal
                            length carry a (B, T) validity mask: padded steps are never ranked
                            and never masked.
    tokens  x (B, L) ids    a feature is a token. Saliency, masking and fills work on the
                            embedding output (B, L, D), which the score reduces over D. Padding
                            (and the query of pair tasks: the dataset's (B, L) `valid` mask) is
                            never ranked and never masked.

Scores are (B, N) with N the features of a sample; masks are (B, N) bool. Per sample,
k = floor(mask_frac x valid features). Everything is batched: no loop over samples.

A token model exposes its embedding: `embed(ids) -> (B, L, D)` and `forward_embedded(e, mask)
-> logits`, with mask (B, L) bool true on real tokens; `pad_id` (default 0) and, for the fills,
`unk_id` and `vocab_size`. `Embedded(model)` is the nn.Module from embeddings to logits that
Captum and the attacks call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import UsageError, unknown_name

EPS = 1e-9  # floor(frac * n) with rounding noise removed: 0.3 * 10 is 2.9999999999999996


def n_masked(frac: float, n) -> int | torch.Tensor:
    """floor(frac * n): an int for an int n, a (B,) int64 tensor for a (B,) count tensor."""
    if isinstance(n, torch.Tensor):
        return torch.floor(frac * n.double() + EPS).long()
    return int(math.floor(frac * n + EPS))


@dataclass
class Batch:
    """A batch as the model's differentiable input sees it. `inp` is what saliency is taken of
    and what gets masked (x itself, or the token embeddings); `fwd(inp, *args)` gives the logits;
    `valid` (B, N) bool marks the features that may be ranked and masked (None: all)."""
    inp: torch.Tensor
    fwd: object
    args: tuple = ()
    valid: torch.Tensor | None = None

    def logits(self, inp: torch.Tensor) -> torch.Tensor:
        return self.fwd(inp, *self.args)


# --------------------------------------------------------------------------- ranking (all layouts)


def lowest_k(score: torch.Tensor, frac: float, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(B, N) score -> (B, N) bool: each sample's floor(frac x valid) lowest valid features.

    Without a validity mask every sample has the same k, and one unsorted topk finds the set
    (sorting it would cost twice the selection). With one, k differs per sample: invalid
    features are pushed to the end and one stable argsort ranks every row."""
    b, n = score.shape
    if valid is None:
        k = n_masked(frac, n)
        mask = torch.zeros_like(score, dtype=torch.bool)
        if k > 0:
            idx = score.topk(k, dim=1, largest=False, sorted=False).indices  # (B, k)
            mask.scatter_(1, idx, True)
        return mask
    k = n_masked(frac, valid.sum(1))  # (B,)
    s = score.masked_fill(~valid, float("inf"))
    order = s.argsort(dim=1, stable=True)  # (B, N), lowest first, invalid last
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n, device=score.device).expand_as(order))
    return (rank < k[:, None]) & valid


def removal_rank(score: torch.Tensor, valid: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, N) score -> (B, N) int64: each feature's place in the most-salient-first order
    (0 = highest). `rank < k` masks exactly the k highest, nested across k, so one ranking
    serves every fraction; invalid features come last. Ties: with a generator they are broken
    at random (seeded), by one random permutation per row sorted stably by score; without one,
    by the lower flat index (`--ties index`)."""
    b, n = score.shape
    s = score if valid is None else score.masked_fill(~valid, float("-inf"))
    if generator is None:
        order = s.argsort(dim=1, descending=True, stable=True)  # (B, N) positions, best first
    else:
        shuffle = torch.rand(s.shape, generator=generator).to(s.device).argsort(dim=1)  # (B, N)
        order = shuffle.gather(1, s.gather(1, shuffle).argsort(dim=1, descending=True, stable=True))
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n, device=score.device).expand_as(order))
    return rank


def valid_count(valid: torch.Tensor | None, b: int, n: int, device=None) -> torch.Tensor:
    """(B,) number of valid features per sample."""
    if valid is None:
        return torch.full((b,), n, dtype=torch.long, device=device)
    return valid.sum(1)


# --------------------------------------------------------------------------- fills
# fn(inp, m, generator, ctx) -> replacement values shaped like inp. m is the mask already
# shaped to broadcast against inp (or None where the fill does not depend on it); ctx holds what
# some fills need: "model" (token fills), "background" (a dataset's sampler, (n, generator) ->
# (n, T, F) fresh background series), "valid" (the (B, N) validity mask).


def _sample_range(x: torch.Tensor, dims, valid=None):
    """Per-sample min and max over dims, over valid entries only."""
    if valid is None:
        return x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    lo = x.masked_fill(~valid, float("inf")).amin(dim=dims, keepdim=True)
    hi = x.masked_fill(~valid, float("-inf")).amax(dim=dims, keepdim=True)
    return lo, hi


def _uniform_in_range(x, generator, dims, valid=None):
    lo, hi = _sample_range(x, dims, valid)
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return lo + (hi - lo) * u


def _image_blur(x):
    c = x.shape[1]
    w = torch.full((c, 1, 5, 5), 1 / 25, dtype=x.dtype, device=x.device)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), w, groups=c)


IMAGE_FILLS = {
    # uniform between each image's min and max, drawn per value
    "random": lambda x, m, g, ctx: _uniform_in_range(x, g, (1, 2, 3)),
    # each image's per-channel mean
    "mean": lambda x, m, g, ctx: x.mean(dim=(2, 3), keepdim=True).expand_as(x),
    "zero": lambda x, m, g, ctx: torch.zeros_like(x),
    # each image's top-left pixel, per channel: the SGT authors' mask-eval choice
    "background": lambda x, m, g, ctx: x[:, :, :1, :1].expand_as(x),
    # a 5x5 box blur of the image, per channel
    "blur": lambda x, m, g, ctx: _image_blur(x),
}


def _series_valid(ctx, x):
    v = (ctx or {}).get("valid")  # (B, T*F) bool
    return None if v is None else v.view(x.shape)


def _series_background(x, m, g, ctx):
    sampler = (ctx or {}).get("background")
    if sampler is None:
        raise UsageError("fill 'background' needs a dataset with a background process (the tsb-* sets); "
                         "use random, mean or zero")
    return sampler(len(x), g).to(x.device, x.dtype)  # (B, T, F)


SERIES_FILLS = {
    # uniform between each series' min and max (over its valid cells), drawn per cell
    "random": lambda x, m, g, ctx: _uniform_in_range(x, g, (1, 2), _series_valid(ctx, x)),
    # each feature's mean over the series' valid steps
    "mean": lambda x, m, g, ctx: _series_mean(x, _series_valid(ctx, x)),
    "zero": lambda x, m, g, ctx: torch.zeros_like(x),
    # cells of a fresh draw from the dataset's own background process, without its signal
    "background": _series_background,
}


def _series_mean(x, valid):
    if valid is None:
        return x.mean(dim=1, keepdim=True).expand_as(x)
    w = valid.to(x.dtype)
    return ((x * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1)).expand_as(x)


def _previous_salient(e, m, g, ctx):
    """Each masked token takes the embedding of the nearest kept token before it, or, with none
    before it, of the nearest kept token after it (our reading of the SGT paper's "replace with
    the previous salient word"). Kept = valid and not masked: never padding or the query."""
    b, n = m.shape[:2]
    m = m.view(b, n)
    valid = (ctx or {}).get("valid")
    kept = ~m if valid is None else (~m & valid)
    pos = torch.arange(n, device=e.device).expand(b, n)
    prev = torch.where(kept, pos, torch.full_like(pos, -1)).cummax(dim=1).values  # (B, L)
    nxt = torch.where(kept, pos, torch.full_like(pos, n)).flip(1).cummin(dim=1).values.flip(1)
    src = torch.where(prev >= 0, prev, nxt).clamp(0, n - 1)  # (B, L)
    return e.gather(1, src[:, :, None].expand_as(e))


def _token_embedding(ctx, ids: torch.Tensor) -> torch.Tensor:
    model = (ctx or {}).get("model")
    if model is None:
        raise UsageError("token fills need ctx['model'] (the model's embed)")
    return model.embed(ids)


TOKEN_FILLS = {
    "previous-salient": _previous_salient,
    # the <unk> token's embedding
    "unk": lambda e, m, g, ctx: _token_embedding(ctx, torch.full(e.shape[:2], getattr(ctx["model"], "unk_id", 1),
                                                                  dtype=torch.long, device=e.device)),
    # a random vocabulary word per masked token (special tokens excluded)
    "random-token": lambda e, m, g, ctx: _token_embedding(ctx, _random_ids(ctx["model"], e.shape[:2], g, e.device)),
    "zero": lambda e, m, g, ctx: torch.zeros_like(e),
}


def _random_ids(model, shape, g, device):
    lo = getattr(model, "first_word_id", 0)
    return torch.randint(lo, model.vocab_size, shape, generator=g).to(device)


# --------------------------------------------------------------------------- layouts


class Embedded(nn.Module):
    """A token model as a function of its embeddings: forward(e (B, L, D), mask (B, L)) -> logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, e, mask):
        return self.model.forward_embedded(e, mask)


class ImageLayout:
    name = "image"
    fills = IMAGE_FILLS
    default_fill = "random"
    signs = ("abs", "signed", "abs-mean")
    default_sign = "abs"

    def n_features(self, shape) -> int:
        return int(shape[1] * shape[2])  # (C, H, W) -> H*W

    def batch(self, model, x, valid=None) -> Batch:
        return Batch(x, model)

    def score(self, attr: torch.Tensor, inp: torch.Tensor, how: str = "abs") -> torch.Tensor:
        """(B, C, H, W) -> (B, H*W): mean over channels of |attr| ("abs"), of attr ("signed", the
        SGT authors' training default), or |mean over channels of attr| ("abs-mean", the authors'
        mask-eval rule)."""
        if how == "abs":
            s = attr.abs().mean(dim=1)
        elif how == "signed":
            s = attr.mean(dim=1)
        elif how == "abs-mean":
            s = attr.mean(dim=1).abs()
        else:
            raise unknown_name("image saliency reduction", how, self.signs)
        return s.reshape(len(s), -1)

    def expand(self, m: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        b, _, h, w = inp.shape
        return m.view(b, 1, h, w)

    def unflatten(self, score: torch.Tensor, inp_shape) -> torch.Tensor:
        return score.view(score.shape[0], *inp_shape[-2:])  # (B, H, W)


class SeriesLayout:
    name = "series"
    fills = SERIES_FILLS
    default_fill = "random"
    signs = ("abs", "signed")
    default_sign = "abs"

    def n_features(self, shape) -> int:
        return int(shape[0] * shape[1])  # (T, F) -> T*F

    def batch(self, model, x, valid=None) -> Batch:
        """valid: (B, T) bool steps (padded series), or None."""
        if valid is None:
            return Batch(x, model)
        return Batch(x, model, (), valid[:, :, None].expand(x.shape).reshape(len(x), -1))

    def score(self, attr, inp, how="abs"):
        if how not in self.signs:
            raise unknown_name("series saliency reduction", how, self.signs)
        s = attr.abs() if how == "abs" else attr
        return s.reshape(len(s), -1)  # (B, T*F)

    def expand(self, m, inp):
        return m.view(inp.shape)

    def unflatten(self, score, inp_shape):
        return score.view(score.shape[0], *inp_shape[-2:])  # (B, T, F)


class TokenLayout:
    name = "tokens"
    fills = TOKEN_FILLS
    default_fill = "previous-salient"
    signs = ("sum", "abs-sum", "l2", "grad-x-input", "abs")
    default_sign = "sum"

    def n_features(self, shape) -> int:
        return int(shape[0])  # (L,)

    def batch(self, model, x, valid=None) -> Batch:
        """x (B, L) ids -> the embeddings (B, L, D), with the padding mask as the forward's argument.
        valid (B, L): the tokens that may be masked (the document's); default: every real token."""
        real = x != getattr(model, "pad_id", 0)  # (B, L)
        return Batch(model.embed(x), Embedded(model), (real,), real if valid is None else valid & real)

    def score(self, attr, inp, how="sum"):
        """(B, L, D) -> (B, L): the gradient summed over each token's embedding (the SGT paper's
        word saliency, signed), the sum's magnitude ("abs", what the ERASER evaluation ranks by),
        the absolute values' sum, the L2 norm, or gradient x input summed."""
        if how == "sum":
            return attr.sum(-1)
        if how == "abs":
            return attr.sum(-1).abs()
        if how == "abs-sum":
            return attr.abs().sum(-1)
        if how == "l2":
            return attr.norm(dim=-1)
        if how == "grad-x-input":
            return (attr * inp).sum(-1)
        raise unknown_name("token saliency reduction", how, self.signs)

    def expand(self, m, inp):
        return m.view(*inp.shape[:2], 1)

    def unflatten(self, score, inp_shape):
        return score


LAYOUTS = {"image": ImageLayout(), "series": SeriesLayout(), "tokens": TokenLayout()}


def get_layout(name):
    if not isinstance(name, str):
        return name
    if name not in LAYOUTS:
        raise unknown_name("layout", name, LAYOUTS)
    return LAYOUTS[name]


def get_fill(layout, fill):
    """A fill function by name (or a callable, returned as it is); the error lists the layout's fills."""
    if callable(fill):
        return fill
    lay = get_layout(layout)
    if fill not in lay.fills:
        raise unknown_name(f"{lay.name} fill", fill, lay.fills)
    return lay.fills[fill]


def mask(layout, inp: torch.Tensor, m: torch.Tensor, fill, generator=None, ctx=None) -> torch.Tensor:
    """inp with the features of m (B, N) replaced by the fill's values."""
    lay = get_layout(layout)
    mm = lay.expand(m, inp)
    return torch.where(mm, get_fill(lay, fill)(inp, mm, generator, ctx), inp)

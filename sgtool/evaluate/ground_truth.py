"""Saliency against a ground-truth mask of salient features (Ismail et al. 2020, the time-series
benchmark's metrics; sgtool applies them to synthetic images too).

Scores are (B, N) >= 0 over a sample's N features (any shape is flattened per sample), ground
truths (B, N) bool. Everything is batched over samples.
"""

from __future__ import annotations

import torch

from ..layout import removal_rank

GT_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # p of the weighted precision/recall


def trapezoid(y: torch.Tensor, x) -> torch.Tensor:
    """Area under y (..., P) over the points x (P,), by the trapezoid rule: (...)."""
    return torch.trapezoid(y, x=torch.as_tensor(x, dtype=y.dtype), dim=-1)


def _taken(score: torch.Tensor, levels):
    """For each level p the most salient features, best first, until their summed saliency
    reaches p of the sample's total: (taken (B, P, N) saliency-weighted, order (B, N))."""
    b = score.shape[0]
    s = score.reshape(b, -1).double()  # (B, N)
    s_sorted, order = s.sort(dim=1, descending=True, stable=True)
    before = s_sorted.cumsum(1) - s_sorted  # saliency of the features ranked above each one
    total = s_sorted.sum(1, keepdim=True)  # (B, 1)
    p = torch.as_tensor(levels, dtype=s.dtype)
    # A feature is taken while the sum before it is still short of p * total: (B, P, N). The
    # 1e-9 keeps rounding (in floating point 0.1 + 0.2 > 0.3) from taking one feature too many.
    taken = (before[:, None, :] < (p[None, :, None] - 1e-9) * total[:, :, None]) * s_sorted[:, None, :]
    return taken, order, s


def saliency_precision_recall(score: torch.Tensor, gt: torch.Tensor, levels=GT_LEVELS):
    """Weighted saliency precision and recall against a ground-truth mask (Ismail et al. 2020).

    score (B, ...) >= 0, gt (B, ...) bool, flattened per sample -> precision, recall (B, P).
    precision = saliency on (taken ∩ gt) / saliency taken; recall = saliency on (taken ∩ gt) /
    saliency on gt. A zero denominator gives 0."""
    b = score.shape[0]
    taken, order, s = _taken(score, levels)
    g = gt.reshape(b, -1).to(s.dtype)
    g_sorted = g.gather(1, order)
    hit = (taken * g_sorted[:, None, :]).sum(-1)  # (B, P)
    on_taken, on_gt = taken.sum(-1), (s * g).sum(1, keepdim=True)
    precision = torch.where(on_taken > 0, hit / on_taken.clamp_min(1e-300), 0.0)
    recall = torch.where(on_gt > 0, hit / on_gt.clamp_min(1e-300), 0.0)
    return precision.float(), recall.float()


def precision_at_gt(score: torch.Tensor, gt: torch.Tensor, generator=None) -> torch.Tensor:
    """Plain precision at |GT|: the share of the |GT| top-scored features that lie in the ground
    truth. score (B, ...), gt (B, ...) bool -> (B,); 0 where GT is empty."""
    b = score.shape[0]
    g = gt.reshape(b, -1)
    size = g.sum(1, keepdim=True)  # (B, 1)
    top = removal_rank(score.reshape(b, -1), generator=generator) < size  # (B, N): the |GT| highest
    return ((top & g).sum(1) / size.squeeze(1).clamp_min(1)).float()


def taken_mask(score: torch.Tensor, levels=GT_LEVELS) -> torch.Tensor:
    """(B, P, N) bool: at each level p, the features `saliency_precision_recall` takes."""
    taken, order, _ = _taken(score, levels)
    mask = torch.zeros_like(taken, dtype=torch.bool)
    return mask.scatter_(2, order[:, None, :].expand_as(taken), taken > 0)


def _top_mean(s: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Mean of the k largest values along the last dim, k (B,) per sample: s (B, A, C) -> (B, A)."""
    top = s.sort(-1, descending=True).values.cumsum(-1)  # (B, A, C)
    k = k.clamp(1, s.shape[-1])
    return top.gather(-1, (k - 1)[:, None, None].expand(-1, s.shape[1], 1))[..., 0] / k[:, None]


def axis_precision_recall(score: torch.Tensor, gt: torch.Tensor, levels=GT_LEVELS):
    """Time-level and feature-level weighted precision and recall of series maps (the
    benchmark's getFeatureTimePrecisionRecall). score, gt (B, T, F). A step (a feature) is
    predicted salient at level p when any of its cells is among the cells taken at p, and truly
    salient when any of its cells is in the ground truth. Its weight is the mean of its k
    highest scores, k the box's extent across it: the box's width in features for a step, its
    length in steps for a feature (the benchmark swapped the two; they differ only for the
    rare-time and rare-feature boxes). Returns {"time": (precision, recall), "feature": (...)},
    each (B, P); a zero denominator gives 0."""
    b, t, f = score.shape
    taken = taken_mask(score.reshape(b, -1), levels).view(b, len(levels), t, f)
    s = score.double()
    out = {}
    for name, reduce_dim, s_axis in (("time", 3, s), ("feature", 2, s.transpose(1, 2))):
        pred = taken.any(reduce_dim)  # (B, P, A)
        true = gt.any(reduce_dim - 1)  # (B, A)
        extent = gt.any(1 if name == "time" else 2).sum(-1)  # box width (time) or length (feature)
        w = _top_mean(s_axis, extent)  # (B, A)
        tp = (w[:, None] * (pred & true[:, None])).sum(-1)
        fp = (w[:, None] * (pred & ~true[:, None])).sum(-1)
        fn = (w * true).sum(-1, keepdim=True) - tp
        prec = torch.where(tp + fp > 0, tp / (tp + fp).clamp_min(1e-300), 0.0)
        rec = torch.where(tp + fn > 0, tp / (tp + fn).clamp_min(1e-300), 0.0)
        out[name] = (prec.float(), rec.float())
    return out


def minmax_rescale(score: torch.Tensor) -> torch.Tensor:
    """The benchmark's post-processing of every map: |attribution|, min-max scaled per sample
    over all its cells into [0, 1] (a constant map becomes 0). score (B, N) >= 0."""
    lo, hi = score.amin(1, keepdim=True), score.amax(1, keepdim=True)
    return torch.where(hi > lo, (score - lo) / (hi - lo).clamp_min(1e-30), torch.zeros_like(score))


def series_metrics(score: torch.Tensor, gt: torch.Tensor, shape, perm_gen: torch.Generator) -> dict:
    """Every ground-truth metric of a batch of series maps, summed over its samples. score (B, N)
    = |attribution| per cell, gt (B, N) bool, shape (T, F). The maps are first rescaled as the
    benchmark does. perm: the same map with its feature axis permuted (one permutation for the
    whole evaluation: pass a generator seeded the same way for every batch)."""
    b = score.shape[0]
    s = minmax_rescale(score.double())
    area = lambda v: trapezoid(v, GT_LEVELS).sum().item()  # noqa: E731
    prec, rec = saliency_precision_recall(s, gt)
    out = {"aup": area(prec), "aur": area(rec), "aupr": aupr_sorted(prec, rec).sum().item(),
           "precision_at_gt": precision_at_gt(s, gt).sum().item()}
    axes = axis_precision_recall(s.view(b, *shape), gt.view(b, *shape))
    for name, (p, r) in axes.items():
        out[f"{name}_aup"], out[f"{name}_aur"] = area(p), area(r)
    perm = permuted_map(s.view(b, *shape), perm_gen).reshape(b, -1)
    pp, pr = saliency_precision_recall(perm, gt)
    out["perm_aup"], out["perm_aur"] = area(pp), area(pr)
    return out


def aupr_sorted(precision: torch.Tensor, recall: torch.Tensor) -> torch.Tensor:
    """The benchmark's AUPR: np.trapz(precision[o], recall[o]) with o = argsort(recall). (B,)"""
    o = recall.argsort(dim=-1, stable=True)
    return torch.trapezoid(precision.gather(-1, o).double(), x=recall.gather(-1, o).double(), dim=-1).float()


def permuted_map(score: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The benchmark's random map: a real map (B, T, F) with its feature axis permuted, one
    permutation for all samples and steps. It keeps the map's values and its time profile and
    scatters only which feature they fall on."""
    perm = torch.randperm(score.shape[-1], generator=generator).to(score.device)
    return score[..., perm]

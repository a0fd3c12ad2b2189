"""Saliency against a ground-truth mask of salient features (Ismail et al. 2020, the time-series
benchmark's metrics; sgtool applies them to synthetic images too).

Scores are (B, N) >= 0 over a sample's N features (any shape is flattened per sample), ground
truths (B, N) bool. Everything is batched over samples.
"""

from __future__ import annotations

import torch

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


def aupr(precision: torch.Tensor, recall: torch.Tensor) -> torch.Tensor:
    """Area under precision against recall (B, P) -> (B,), by the trapezoid rule over the levels'
    recall values, as the benchmark integrates it (np.trapz of precision over recall)."""
    return torch.trapezoid(precision.double(), x=recall.double(), dim=-1).float()


def precision_at_gt(score: torch.Tensor, gt: torch.Tensor, generator=None) -> torch.Tensor:
    """Plain precision at |GT|: the share of the |GT| top-scored features that lie in the ground
    truth. score (B, ...), gt (B, ...) bool -> (B,); 0 where GT is empty."""
    from ..layout import removal_rank

    b = score.shape[0]
    g = gt.reshape(b, -1)
    size = g.sum(1, keepdim=True)  # (B, 1)
    top = removal_rank(score.reshape(b, -1), generator=generator) < size  # (B, N): the |GT| highest
    return ((top & g).sum(1) / size.squeeze(1).clamp_min(1)).float()


def axis_precision_recall(score: torch.Tensor, gt: torch.Tensor, levels=GT_LEVELS):
    """Time-level and feature-level weighted precision and recall of a series map: score and gt
    (B, T, F) are reduced to (B, T) and (B, F) (a step, or a feature, counts as salient when any
    of its cells is; its saliency is the sum over its cells), then scored as above.
    Returns {"time": (precision, recall), "feature": (precision, recall)}, each (B, P)."""
    out = {}
    for name, dim in (("time", 2), ("feature", 1)):
        out[name] = saliency_precision_recall(score.sum(dim), gt.any(dim), levels)
    return out


def permuted_map(score: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The benchmark's random map: a real map (B, T, F) with its feature axis permuted, one
    permutation for all samples and steps. It keeps the map's values and its time profile and
    scatters only which feature they fall on."""
    perm = torch.randperm(score.shape[-1], generator=generator).to(score.device)
    return score[..., perm]

"""Saliency maps and the masking helpers built on them.

Masking helpers (used by SGT/ASGT training and by mask-eval) work on a per-position score
(B, H, W) and mask every channel of the chosen positions. They are batched: topk + scatter,
no Python loop over samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------- SALIENCY registry
# name -> fn(model, x, target) -> attribution shaped like x (B, C, H, W). Captum's contract.
# The per-position score used everywhere is position_score(attr): |attr| averaged over channels.


def grad_saliency(model, x, target):
    """Plain input gradient of the target logit (Captum Saliency, abs=False)."""
    from captum.attr import Saliency

    return Saliency(model).attribute(x, target=target, abs=False)


def random_saliency(model, x, target, seed: int = 0):
    """A seeded baseline: uniform noise, independent of the model."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(x.shape, generator=g).to(x.device)


SALIENCY = {
    "grad": grad_saliency,
    "random": random_saliency,
}


def get_saliency(name: str):
    from .errors import unknown_name

    if name not in SALIENCY:
        raise unknown_name("saliency method", name, SALIENCY)
    return SALIENCY[name]


# --------------------------------------------------------------------------- gradients


def input_gradient(model, x: torch.Tensor, target: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """d log p(target | x) / dx, shaped like x. Only the input gradient is computed
    (torch.autograd.grad), so parameter .grad fields are left untouched."""
    x = x.detach().requires_grad_(True)
    logp = F.log_softmax(model(x), dim=1)  # (B, classes)
    sel = logp.gather(1, target[:, None]).sum()
    (g,) = torch.autograd.grad(sel, x, create_graph=create_graph)
    return g


def position_score(attr: torch.Tensor, sign: str = "abs") -> torch.Tensor:
    """(B, C, H, W) attribution -> (B, H, W) score: |attr| averaged over channels, or the
    signed attribution averaged over channels (sign="signed", the SGT authors' default)."""
    return (attr.abs() if sign == "abs" else attr).mean(dim=1)


# --------------------------------------------------------------------------- masks


def rank_mask(score: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    """(B, H, W) score -> (B, 1, H, W) bool mask of the k highest (largest=True) or lowest
    positions of each sample."""
    b = score.shape[0]
    flat = score.reshape(b, -1)  # (B, H*W)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        idx = flat.topk(k, dim=1, largest=largest).indices  # (B, k)
        mask.scatter_(1, idx, True)
    return mask.view(b, 1, *score.shape[1:])


def fill_values(x: torch.Tensor, fill: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Replacement values shaped like x (B, C, H, W).

    random: uniform between each image's min and max, drawn per value;
    mean: each image's per-channel mean; zero: 0;
    background: each image's top-left pixel (per channel), the SGT authors' mask-eval choice;
    blur: a 5x5 box blur of the image (per channel).
    """
    if fill == "random":
        lo = x.amin(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return lo + (hi - lo) * u
    if fill == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    if fill == "zero":
        return torch.zeros_like(x)
    if fill == "background":
        return x[:, :, :1, :1].expand_as(x)
    if fill == "blur":
        c = x.shape[1]
        w = torch.full((c, 1, 5, 5), 1 / 25, dtype=x.dtype, device=x.device)
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), w, groups=c)
    raise ValueError(f"unknown fill '{fill}'")


def apply_mask(x: torch.Tensor, mask: torch.Tensor, fill: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """x with the positions of mask (B, 1, H, W) replaced, in every channel."""
    return torch.where(mask, fill_values(x, fill, generator), x)


def mask_lowest(x: torch.Tensor, score: torch.Tensor, k: int, fill: str,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """SGT's X~: the k lowest-scoring positions of each sample replaced in every channel."""
    return apply_mask(x, rank_mask(score, k, largest=False), fill, generator)

"""Saliency maps and the masking helpers built on them.

Masking helpers (used by SGT/ASGT training and by mask-eval) work on a per-position score
(B, H, W) and mask every channel of the chosen positions. They are batched: topk + scatter,
no Python loop over samples.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------- SALIENCY registry
# name -> fn(model, x, target, *, seed=0, baseline="zero") -> attribution shaped like x
# (B, C, H, W): Captum's contract, plus two keywords every method accepts so that callers can
# treat the registry uniformly; a method ignores the keywords it has no use for.
# The per-position score used everywhere is position_score(attr): |attr| averaged over channels.
#
# Randomness (smoothgrad's noise, the SHAP baselines, the random baselines) is drawn from `seed`
# alone: the same (model, x, target, seed) gives the same attribution. Captum's samplers use
# the global torch and numpy generators, so those are seeded inside `_seeded` and restored after.
#
# Settings, in the model's pixel space [0, 1] (the authors worked in normalised units, so noise
# scales are given in those units and converted with the model's Normalize std):
#   ig: 50 steps (Gauss-Legendre), baseline zero (black) or random (uniform in [0, 1], seeded);
#   smoothgrad: NoiseTunnel over Saliency, smoothgrad_sq, 5 samples, sigma = 1 normalised unit
#     (Captum's defaults, which is how the authors called it on normalised inputs);
#   gradshap: 5 samples, sigma = 0.09 normalised units (the authors' value), baselines drawn
#     from SHAP_BASELINES seeded uniform-noise images (the authors drew uniform noise too);
#   deepliftshap: the same SHAP_BASELINES noise images, each one a DeepLift reference;
#   deeplift: zero (black) reference;
#   occlusion: 4x4 windows at stride 2, replaced by 0 (169 forward passes per 28x28 image).

N_STEPS_IG = 50
SHAP_BASELINES = 5
NT_SAMPLES = 5


@contextmanager
def _quiet():
    """Captum warns on every call that it sets (and removes) hooks, or that the input did not
    require gradients; neither is news here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


@contextmanager
def _seeded(seed: int, device: torch.device):
    """Seed the global torch (and CUDA) and numpy generators for Captum's samplers, then
    restore them, so the caller's random streams are untouched."""
    devices = [device] if device.type == "cuda" else []
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=devices), _quiet():
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(np_state)


def _uniform_like(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n images of uniform noise in [0, 1], shaped like x's samples: (n, C, H, W)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *x.shape[1:]), generator=g).to(x.device, x.dtype)


def _input_std(model) -> float:
    """The model's normalisation std (mean over channels), to convert noise scales given in
    normalised units into pixel units; 1.0 for a model without a leading Normalize layer."""
    first = model[0] if isinstance(model, torch.nn.Sequential) and len(model) else None
    std = getattr(first, "std", None)
    return float(std.mean()) if isinstance(std, torch.Tensor) else 1.0


def grad_saliency(model, x, target, *, seed=0, baseline="zero"):
    """Plain input gradient of the target logit (Captum Saliency, abs=False)."""
    from captum.attr import Saliency

    with _quiet():
        return Saliency(model).attribute(x, target=target, abs=False)


def ig_saliency(model, x, target, *, seed=0, baseline="zero"):
    """Integrated gradients, 50 steps, from a zero image or a seeded uniform-noise image."""
    from captum.attr import IntegratedGradients

    ref = torch.zeros_like(x) if baseline == "zero" else _uniform_like(x, len(x), seed)
    with _quiet():
        return IntegratedGradients(model).attribute(
            x, baselines=ref, target=target, n_steps=N_STEPS_IG, internal_batch_size=4 * len(x)
        )


def smoothgrad_saliency(model, x, target, *, seed=0, baseline="zero"):
    """SmoothGrad-squared: mean of squared gradients over noisy copies of x."""
    from captum.attr import NoiseTunnel, Saliency

    with _seeded(seed, x.device):
        return NoiseTunnel(Saliency(model)).attribute(
            x, nt_type="smoothgrad_sq", nt_samples=NT_SAMPLES, stdevs=_input_std(model), target=target
        )


def _deeplift_rules() -> None:
    """Captum's DeepLift picks a layer's rule by its exact type: sgtool's MaxPool2d, a faster
    nn.MaxPool2d, gets nn.MaxPool2d's rule rather than being treated as linear."""
    from captum.attr._core import deep_lift

    from .models import MaxPool2d

    rules = deep_lift.SUPPORTED_NON_LINEAR
    rules.setdefault(MaxPool2d, rules[torch.nn.MaxPool2d])


def deeplift_saliency(model, x, target, *, seed=0, baseline="zero"):
    from captum.attr import DeepLift

    _deeplift_rules()
    with _quiet():
        return DeepLift(model).attribute(x, baselines=torch.zeros_like(x), target=target)


def gradshap_saliency(model, x, target, *, seed=0, baseline="zero"):
    from captum.attr import GradientShap

    refs = _uniform_like(x, SHAP_BASELINES, seed)  # (K, C, H, W)
    with _seeded(seed, x.device):
        return GradientShap(model).attribute(
            x, baselines=refs, n_samples=SHAP_BASELINES, stdevs=0.09 * _input_std(model), target=target
        )


def deepliftshap_saliency(model, x, target, *, seed=0, baseline="zero"):
    from captum.attr import DeepLiftShap

    _deeplift_rules()
    refs = _uniform_like(x, SHAP_BASELINES, seed)  # (K, C, H, W)
    with _seeded(seed, x.device):
        return DeepLiftShap(model).attribute(x, baselines=refs, target=target)


def inputxgrad_saliency(model, x, target, *, seed=0, baseline="zero"):
    from captum.attr import InputXGradient

    with _quiet():
        return InputXGradient(model).attribute(x, target=target)


def guided_backprop_saliency(model, x, target, *, seed=0, baseline="zero"):
    from captum.attr import GuidedBackprop

    with _quiet():
        return GuidedBackprop(model).attribute(x, target=target)


def occlusion_saliency(model, x, target, *, seed=0, baseline="zero"):
    from captum.attr import Occlusion

    c = x.shape[1]
    with _quiet():
        return Occlusion(model).attribute(
            x, sliding_window_shapes=(c, 4, 4), strides=(c, 2, 2), baselines=0.0, target=target,
            perturbations_per_eval=max(1, 1024 // len(x)),
        )


def random_saliency(model, x, target, *, seed=0, baseline="zero"):
    """A seeded baseline: uniform noise, independent of the model."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(x.shape, generator=g).to(x.device)


SALIENCY = {
    "grad": grad_saliency,
    "ig": ig_saliency,
    "smoothgrad": smoothgrad_saliency,
    "deeplift": deeplift_saliency,
    "gradshap": gradshap_saliency,
    "deepliftshap": deepliftshap_saliency,
    "inputxgrad": inputxgrad_saliency,
    "guided-backprop": guided_backprop_saliency,
    "occlusion": occlusion_saliency,
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
    (g,) = torch.autograd.grad(label_log_prob(model(x), target), x, create_graph=create_graph)
    return g


def label_log_prob(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """sum_i log p(target_i | x_i) from logits (B, classes): the objective of the input gradient."""
    return F.log_softmax(logits, dim=1).gather(1, target[:, None]).sum()


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
        # Unsorted: the set is all the mask needs, and sorting it costs twice the selection.
        idx = flat.topk(k, dim=1, largest=largest, sorted=False).indices  # (B, k)
        mask.scatter_(1, idx, True)
    return mask.view(b, 1, *score.shape[1:])


def removal_rank(score: torch.Tensor) -> torch.Tensor:
    """(B, H, W) score -> (B, H, W) int64: each position's place in the most-salient-first
    order (0 = highest score; ties go to the lower flat index). `rank < k` masks exactly the k
    highest positions, and these masks are nested across k, so one argsort serves every
    fraction; `rank >= H*W - k` masks the k lowest."""
    b = score.shape[0]
    flat = score.reshape(b, -1)  # (B, H*W)
    order = flat.argsort(dim=1, descending=True, stable=True)  # (B, H*W) positions, best first
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return rank.view(score.shape)


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

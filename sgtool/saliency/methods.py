"""The saliency methods, over Captum: fn(model, x, target, **settings) -> attribution shaped like x.

Captum's contract (`attribute(inputs, target)`), plus keywords every method accepts so that
callers can treat the registry alike; a method ignores those it has no use for:

    seed      all randomness (SmoothGrad's noise, the baselines, the random map) comes from it
              alone: the same (model, x, target, seed) gives the same attribution. Captum's
              samplers use the global torch and numpy generators, so those are seeded inside
              `_seeded` and restored after.
    baseline  the reference of ig, deeplift, deeplift-authors and (their noise range) gradshap
              and deepliftshap: see BASELINES.
    args      extra forward arguments (the padding mask of a token model's `Embedded` form).
    scale     the model's input std in the units of x, to turn noise scales given in the
              model's normalised units (as the SGT authors gave them) into x's units; only
              smoothgrad and gradshap use it (`nnutil.input_std` finds it).
    ref       the model's normalisation (mean, std) per channel, for the "authors" baseline;
              None where inputs are not normalised by the model (series, embeddings).

Settings (the SGT authors' values; their model ended in log_softmax, so the explained output
is log p(target | x): callers wrap the model in `LogProb` for that, the default of mask-eval):
    grad          input gradient (Captum Saliency, abs=False)
    smoothgrad    NoiseTunnel(Saliency), smoothgrad_sq, NT_SAMPLES = 5 samples, sigma = 1
                  normalised unit (Captum's defaults, as the authors called it)
    ig            IntegratedGradients, N_STEPS_IG = 50 steps (Gauss-Legendre), one baseline
                  per sample
    deeplift      Captum's DeepLift (its rescale rules on nn.ReLU / nn.MaxPool2d modules)
    deeplift-authors  (x - baseline) * gradient: what the authors' DeepLift computed, because
                  their network's F.relu and F.max_pool2d gave Captum no module to apply its
                  rules to
    gradshap      GradientShap, SHAP_BASELINES = 5 noise baselines, 5 samples, sigma = 0.09
                  normalised units
    deepliftshap  DeepLiftShap over the same SHAP_BASELINES noise baselines
    inputxgrad, guided-backprop, occlusion (4x4 windows at stride 2, replaced by 0)
    random        seeded uniform noise, independent of the model: the baseline ranking
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import numpy as np
import torch

from ..errors import UsageError, unknown_name
from ..fastpath import MaxPool2d

N_STEPS_IG = 50
SHAP_BASELINES = 5
NT_SAMPLES = 5
NT_SIGMA = 1.0  # normalised units
GS_SIGMA = 0.09  # normalised units

# baseline -> how each family draws its references:
#   "ref": ig / deeplift / deeplift-authors, one per sample; "shap": the 5 SHAP baselines.
BASELINES = {
    # U[0, 1) in the model's normalised units, i.e. mean + std * U[0, 1) in pixels: the
    # authors' np.random.random(shape) on normalised inputs (default)
    "authors": {"ref": "authors", "shap": "authors"},
    "zero": {"ref": "zero", "shap": "uniform"},  # black; the SHAP methods keep noise baselines
    "uniform": {"ref": "uniform", "shap": "uniform"},  # U[0, 1) in x's own units
    # `random`: ig from uniform noise, deeplift from zero
    "random": {"ref": "uniform", "shap": "uniform", "deeplift": "zero"},
    "pad": {"ref": "pad", "shap": "uniform"},  # tokens: the <pad> embedding (set by the caller)
}


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


def _noise(shape, seed: int, device, dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g).to(device, dtype)


def _references(kind: str, x: torch.Tensor, n: int, seed: int, ref=None, pad=None) -> torch.Tensor:
    """n references shaped like x's samples: (n, ...)."""
    shape = (n, *x.shape[1:])
    if kind == "zero":
        return torch.zeros(shape, device=x.device, dtype=x.dtype)
    if kind == "pad":
        if pad is None:
            raise UsageError("baseline 'pad' needs the <pad> embedding (token models only)")
        return pad.to(x.device, x.dtype).expand(shape).clone()
    u = _noise(shape, seed, x.device, x.dtype)
    if kind == "authors" and ref is not None:  # (mean, std), each (1, C, 1, 1): normalised U[0,1) in pixels
        mean, std = ref
        return mean.to(x.device, x.dtype) + std.to(x.device, x.dtype) * u
    return u  # "uniform" (and "authors" where the model has no normalisation)


def _kind(baseline: str, family: str, method: str | None = None) -> str:
    if baseline not in BASELINES:
        raise unknown_name("baseline", baseline, BASELINES)
    rule = BASELINES[baseline]
    return rule.get(method, rule[family])


def grad_saliency(model, x, target, *, args=(), **_):
    """Plain input gradient of the target output (Captum Saliency, abs=False)."""
    from captum.attr import Saliency

    with _quiet():
        return Saliency(model).attribute(x, target=target, abs=False, additional_forward_args=args or None)


def ig_saliency(model, x, target, *, seed=0, baseline="authors", args=(), ref=None, pad=None, **_):
    """Integrated gradients, 50 steps, from one reference per sample (BASELINES)."""
    from captum.attr import IntegratedGradients

    refs = _references(_kind(baseline, "ref"), x, len(x), seed, ref, pad)
    with _quiet():
        return IntegratedGradients(model).attribute(
            x, baselines=refs, target=target, n_steps=N_STEPS_IG, internal_batch_size=4 * len(x),
            additional_forward_args=args or None)


def smoothgrad_saliency(model, x, target, *, seed=0, args=(), scale=1.0, **_):
    """SmoothGrad-squared: mean of squared gradients over noisy copies of x."""
    from captum.attr import NoiseTunnel, Saliency

    with _seeded(seed, x.device):
        return NoiseTunnel(Saliency(model)).attribute(
            x, nt_type="smoothgrad_sq", nt_samples=NT_SAMPLES, stdevs=NT_SIGMA * scale, target=target,
            additional_forward_args=args or None)


def _deeplift_rules() -> None:
    """Captum's DeepLift picks a layer's rule by its exact type: sgtool's MaxPool2d, a faster
    nn.MaxPool2d, gets nn.MaxPool2d's rule rather than being treated as linear."""
    from captum.attr._core import deep_lift

    rules = deep_lift.SUPPORTED_NON_LINEAR
    rules.setdefault(MaxPool2d, rules[torch.nn.MaxPool2d])


def deeplift_saliency(model, x, target, *, seed=0, baseline="authors", args=(), ref=None, pad=None, **_):
    from captum.attr import DeepLift

    _deeplift_rules()
    refs = _references(_kind(baseline, "ref", "deeplift"), x, len(x), seed, ref, pad)
    with _quiet():
        return DeepLift(model).attribute(x, baselines=refs, target=target, additional_forward_args=args or None)


def deeplift_authors_saliency(model, x, target, *, seed=0, baseline="authors", args=(), ref=None, pad=None, **_):
    """(x - b) * d out / dx: the SGT authors' "DeepLift", whose rules never applied (see module doc)."""
    refs = _references(_kind(baseline, "ref", "deeplift"), x, len(x), seed, ref, pad)
    return (x - refs) * grad_saliency(model, x, target, args=args)


def gradshap_saliency(model, x, target, *, seed=0, baseline="authors", args=(), scale=1.0, ref=None, pad=None, **_):
    from captum.attr import GradientShap

    refs = _references(_kind(baseline, "shap"), x, SHAP_BASELINES, seed, ref, pad)  # (K, ...)
    with _seeded(seed, x.device):
        return GradientShap(model).attribute(
            x, baselines=refs, n_samples=SHAP_BASELINES, stdevs=GS_SIGMA * scale, target=target,
            additional_forward_args=args or None)


def deepliftshap_saliency(model, x, target, *, seed=0, baseline="authors", args=(), ref=None, pad=None, **_):
    from captum.attr import DeepLiftShap

    _deeplift_rules()
    refs = _references(_kind(baseline, "shap"), x, SHAP_BASELINES, seed, ref, pad)  # (K, ...)
    with _seeded(seed, x.device):
        return DeepLiftShap(model).attribute(x, baselines=refs, target=target, additional_forward_args=args or None)


def inputxgrad_saliency(model, x, target, *, args=(), **_):
    from captum.attr import InputXGradient

    with _quiet():
        return InputXGradient(model).attribute(x, target=target, additional_forward_args=args or None)


def guided_backprop_saliency(model, x, target, *, args=(), **_):
    from captum.attr import GuidedBackprop

    with _quiet():
        return GuidedBackprop(model).attribute(x, target=target, additional_forward_args=args or None)


def occlusion_saliency(model, x, target, *, args=(), **_):
    from captum.attr import Occlusion

    if x.dim() != 4:
        raise UsageError("occlusion is for images (4x4 windows); use another method")
    c = x.shape[1]
    with _quiet():
        return Occlusion(model).attribute(
            x, sliding_window_shapes=(c, 4, 4), strides=(c, 2, 2), baselines=0.0, target=target,
            perturbations_per_eval=max(1, 1024 // len(x)), additional_forward_args=args or None)


def random_saliency(model, x, target, *, seed=0, **_):
    """A seeded baseline: uniform noise, independent of the model."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(x.shape, generator=g).to(x.device)

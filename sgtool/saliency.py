"""SALIENCY registry over Captum: fn(model, x, target, **settings) -> attribution shaped like x.

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
              smoothgrad and gradshap use it (`models.input_std` finds it).
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

import contextlib
import warnings
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

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
    # sgtool 0.1's `random`: ig from uniform noise, deeplift from zero
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


def rnn_safe(model: nn.Module, x: torch.Tensor):
    """A context for taking gradients through `model` on x's device. cuDNN's RNN kernels refuse
    a backward in eval mode ("cudnn RNN backward can only be called in training mode"), and
    saliency is taken in eval mode: for a model with an RNN on CUDA, cuDNN is switched off
    inside (PyTorch's own RNN kernels then run: the same numbers, slower). Else a no-op."""
    if needs_cudnn_off(model, x.device):
        return torch.backends.cudnn.flags(enabled=False)
    return contextlib.nullcontext()


def needs_cudnn_off(model: nn.Module, device) -> bool:
    return torch.device(device).type == "cuda" and any(isinstance(m, nn.RNNBase) for m in model.modules())


class LogProb(nn.Module):
    """model -> log_softmax(model(...)): saliency of log p(target | x), as the authors' network
    (which ended in log_softmax) gave it to every Captum method, and as SGT trains it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *inputs):
        return F.log_softmax(self.model(*inputs), dim=1)


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
            raise ValueError("baseline 'pad' needs the <pad> embedding (token models only)")
        return pad.to(x.device, x.dtype).expand(shape).clone()
    u = _noise(shape, seed, x.device, x.dtype)
    if kind == "authors" and ref is not None:  # (mean, std), each (1, C, 1, 1): normalised U[0,1) in pixels
        mean, std = ref
        return mean.to(x.device, x.dtype) + std.to(x.device, x.dtype) * u
    return u  # "uniform" (and "authors" where the model has no normalisation)


def _kind(baseline: str, family: str, method: str | None = None) -> str:
    if baseline not in BASELINES:
        from .errors import unknown_name

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

    from .fastpath import MaxPool2d

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
        from .errors import UsageError

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


SALIENCY = {
    "grad": grad_saliency,
    "ig": ig_saliency,
    "smoothgrad": smoothgrad_saliency,
    "deeplift": deeplift_saliency,
    "deeplift-authors": deeplift_authors_saliency,
    "gradshap": gradshap_saliency,
    "deepliftshap": deepliftshap_saliency,
    "inputxgrad": inputxgrad_saliency,
    "guided-backprop": guided_backprop_saliency,
    "occlusion": occlusion_saliency,
    "random": random_saliency,
}
# Methods whose noise is given in the model's normalised units (they need `scale`).
NOISY = {"smoothgrad", "gradshap"}


def get_saliency(name: str):
    """A method by name; `tsr-<method>` wraps any of them in temporal saliency rescaling."""
    from .errors import unknown_name

    if name.startswith("tsr-") and name[4:] in SALIENCY:
        from .evaluate.tsr import tsr

        return tsr(SALIENCY[name[4:]])
    if name not in SALIENCY:
        raise unknown_name("saliency method", name, [*SALIENCY, "tsr-<method>"])
    return SALIENCY[name]


def method_names(name: str) -> str:
    """The registry name a method (or its tsr- wrapper) rests on."""
    return name[4:] if name.startswith("tsr-") else name


def explain_setup(model: nn.Module, methods, output: str = "logprob", baseline: str = "authors",
                  layout: str = "image"):
    """(the module the methods explain, the keywords every method gets but seed) for a model:
    LogProb(model) for output "logprob"; the noise scale where a noisy method is asked for (the
    Normalize std for images; 1 for series, which come scaled by their dataset, so their model's
    unit is the data's); the Normalize (mean, std) for the "authors" baseline."""
    from .models import input_std

    target_model = LogProb(model) if output == "logprob" else model
    kw = {"baseline": baseline}
    if any(method_names(m) in NOISY for m in methods):
        kw["scale"] = input_std(model) if layout == "image" else 1.0
    norm = model[0] if isinstance(model, nn.Sequential) and len(model) else None
    if hasattr(norm, "mean") and hasattr(norm, "std"):
        kw["ref"] = (norm.mean, norm.std)
    return target_model, kw


# --------------------------------------------------------------------------- gradients


def input_gradient(model, x: torch.Tensor, target: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """d log p(target | x) / dx, shaped like x. Only the input gradient is computed
    (torch.autograd.grad), so parameter .grad fields are left untouched."""
    x = x.detach().requires_grad_(True)
    with rnn_safe(model, x):
        (g,) = torch.autograd.grad(label_log_prob(model(x), target), x, create_graph=create_graph)
    return g


def label_log_prob(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """sum_i log p(target_i | x_i) from logits (B, classes): the objective of the input gradient."""
    return F.log_softmax(logits, dim=1).gather(1, target[:, None]).sum()


def position_score(attr: torch.Tensor, sign: str = "abs") -> torch.Tensor:
    """An image attribution (B, C, H, W) -> (B, H, W) score: |attr| averaged over channels, or
    the signed attribution averaged over channels (sign="signed")."""
    from .layout import LAYOUTS

    return LAYOUTS["image"].score(attr, attr, sign).view(attr.shape[0], *attr.shape[2:])

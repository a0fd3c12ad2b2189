"""SALIENCY: name -> fn(model, x, target, **settings) -> an attribution shaped like x.

Captum's contract (`attribute(inputs, target)`), with the keywords every method accepts listed in
methods.py, where the methods and their settings are. `tsr-<method>` wraps any of them in
temporal saliency rescaling (tsr.py). `explain_setup` gives a model's explained module and the
settings its methods need; `input_gradient` is the plain gradient SGT and the attacks take.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import unknown_name
from ..layout import LAYOUTS
from ..nnutil import LogProb, input_std, label_log_prob, needs_cudnn_off, rnn_safe
from .methods import (
    BASELINES,
    GS_SIGMA,
    N_STEPS_IG,
    NT_SAMPLES,
    NT_SIGMA,
    SHAP_BASELINES,
    deeplift_authors_saliency,
    deeplift_saliency,
    deepliftshap_saliency,
    grad_saliency,
    gradshap_saliency,
    guided_backprop_saliency,
    ig_saliency,
    inputxgrad_saliency,
    occlusion_saliency,
    random_saliency,
    smoothgrad_saliency,
)
from .tsr import tsr

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
    if name.startswith("tsr-") and name[4:] in SALIENCY:
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


def position_score(attr: torch.Tensor, sign: str = "abs") -> torch.Tensor:
    """An image attribution (B, C, H, W) -> (B, H, W) score: |attr| averaged over channels, or
    the signed attribution averaged over channels (sign="signed")."""
    return LAYOUTS["image"].score(attr, attr, sign).view(attr.shape[0], *attr.shape[2:])


__all__ = ["SALIENCY", "NOISY", "BASELINES", "get_saliency", "method_names", "explain_setup", "input_gradient",
           "position_score", "label_log_prob", "LogProb", "rnn_safe", "needs_cudnn_off", "tsr", "N_STEPS_IG",
           "SHAP_BASELINES", "NT_SAMPLES", "NT_SIGMA", "GS_SIGMA"]

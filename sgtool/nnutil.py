"""The small torch pieces that models, saliency, SGT and the fast path all use. They sit below
every other part of sgtool and import none of it but its errors.

    Normalize        a model's first layer: (x - mean) / std per channel, so that everything
                     outside the model (saliency, masking, attacks) works on pixels in [0, 1]
    input_std        the std a model's noise scales are given in
    LogProb          model -> log_softmax(model(...)): the output the saliency methods explain
    label_log_prob   sum_i log p(y_i | x_i): the objective of SGT's input gradient
    rnn_safe         a context in which gradients can be taken through a model with an RNN
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import UsageError


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):  # (B, C, H, W) in [0, 1]
        return (x - self.mean) / self.std


def input_std(model: nn.Module) -> float:
    """The model's input scale in its own units, for noise given in those units (SmoothGrad's
    sigma, GradientShap's): the std of a leading Normalize (mean over channels), else the
    model's `input_std` attribute. One clear error otherwise, never a silent 1.0."""
    first = model[0] if isinstance(model, nn.Sequential) and len(model) else None
    std = getattr(first, "std", None) if isinstance(first, Normalize) else None
    if isinstance(std, torch.Tensor):
        return float(std.mean())
    value = getattr(model, "input_std", None)
    if isinstance(value, (int, float)) and value > 0:
        return float(value)
    raise UsageError(f"{type(model).__name__} has no leading Normalize layer and no `input_std` attribute: "
                     f"sgtool cannot convert the noise scales of smoothgrad/gradshap into its units; "
                     f"set model.input_std (the std of its inputs) or use another method")


class LogProb(nn.Module):
    """model -> log_softmax(model(...)): saliency of log p(target | x), as the SGT authors' network
    (which ended in log_softmax) gave it to every Captum method, and as SGT trains it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *inputs):
        return F.log_softmax(self.model(*inputs), dim=1)


def label_log_prob(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """sum_i log p(target_i | x_i) from logits (B, classes): the objective of the input gradient."""
    return F.log_softmax(logits, dim=1).gather(1, target[:, None]).sum()


def needs_cudnn_off(model: nn.Module, device) -> bool:
    return torch.device(device).type == "cuda" and any(isinstance(m, nn.RNNBase) for m in model.modules())


def rnn_safe(model: nn.Module, x: torch.Tensor):
    """A context for taking gradients through `model` on x's device. cuDNN's RNN kernels refuse
    a backward in eval mode ("cudnn RNN backward can only be called in training mode"), and
    saliency is taken in eval mode: for a model with an RNN on CUDA, cuDNN is switched off
    inside (PyTorch's own RNN kernels then run: the same numbers, slower). Else a no-op."""
    if needs_cudnn_off(model, x.device):
        return torch.backends.cudnn.flags(enabled=False)
    return contextlib.nullcontext()

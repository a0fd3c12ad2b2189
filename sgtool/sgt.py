"""Saliency guided training, written once over features: `SGTLoss` (Algorithm 1 of Ismail et al.
2021) and `ASGTLoss` (Algorithm 2 of Guesmi et al. 2024), for any nn.Module that maps its input
to logits and any training loop.

    sgt = sgtool.SGTLoss(mask_frac=0.5, kl_weight=1.0, fill="random", layout="image")
    loss = sgt(model, x, y)        # CE + λ·KL(p(x) ‖ p(x̃)); call loss.backward() yourself
    loss.parts                     # {"ce", "kl"} (ASGT adds "adv_ce"), detached tensors
    loss.logits                    # the clean logits, for accuracy

The model is used as `sgtool train` uses it: the saliency is taken in eval mode (dropout off,
BatchNorm on its running statistics; `saliency_pass="shared"` takes it from the training
forward instead), the loss passes run in the mode the model was in when called, and that mode is
restored afterwards. The saliency is the gradient of the label's log-probability; the layout
(sgtool.layout) says what a feature is, how the gradient becomes one score per feature
(`sign`), which features may be masked, and what the fill puts in their place.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import attacks, fastpath
from .config.train import SALIENCY_PASSES
from .errors import UsageError, unknown_name
from .layout import Batch, get_fill, get_layout, lowest_k
from .layout import mask as apply_fill
from .nnutil import label_log_prob, rnn_safe


def kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) from logits, batchmean: sum_c p (log p - log q), averaged over the batch."""
    return F.kl_div(F.log_softmax(logits_q, 1), F.log_softmax(logits_p, 1), reduction="batchmean", log_target=True)


def _with_parts(loss: torch.Tensor, logits: torch.Tensor, **parts) -> torch.Tensor:
    loss.parts = {k: v.detach() for k, v in parts.items()}
    loss.logits = logits
    return loss


def saliency_pass(model: nn.Module, b: Batch, y: torch.Tensor, how: str = "eval"):
    """(g, logits): g = d sum log p(y|inp) / d inp (B, ...) like b.inp, and the logits of b.inp
    for the loss, with the graph to the parameters.

    "eval": g with the model in eval mode, then the logits in the caller's mode (two passes);
    "shared": both from one forward in the caller's mode (dropout active in the saliency).
    sgtool's image models on a CPU take fastpath's versions (the same numbers, shared trunk)."""
    if how not in SALIENCY_PASSES:
        raise unknown_name("saliency pass", how, SALIENCY_PASSES)
    if b.fwd is model and not b.args and fastpath.applies(model, b.inp):
        return fastpath.PASSES[how](model, b.inp, y)
    if how == "eval" and has_trunk(b):
        return trunk_pass(b.fwd.model, b, y)
    if how == "eval":
        was = model.training
        model.eval()
        with rnn_safe(model, b.inp):
            xr = b.inp.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(label_log_prob(b.logits(xr), y), xr)
        model.train(was)
        return g, b.logits(b.inp)
    inp = b.inp if b.inp.requires_grad else b.inp.detach().requires_grad_(True)
    logits = b.logits(inp)
    (g,) = torch.autograd.grad(label_log_prob(logits, y), inp, retain_graph=True)
    return g, logits


def has_trunk(b: Batch) -> bool:
    """Is b a token model's batch (layout.Embedded) whose model is split into trunk and head?"""
    return hasattr(getattr(b.fwd, "model", None), "forward_trunk")


def trunk_pass(model: nn.Module, b: Batch, y: torch.Tensor):
    """The "eval" pass of a token model split as forward_head(forward_trunk(e, mask), mask),
    whose trunk has no mode-dependent layer (sgtool's BiLSTM and TextCNN): the trunk runs once,
    and only the head runs twice, in eval mode for g and in the caller's mode for the logits.
    The same numbers as two whole passes, for one trunk pass less (the LSTMs are most of a step)."""
    inp = b.inp if b.inp.requires_grad else b.inp.detach().requires_grad_(True)  # (B, L, D)
    (mask,) = b.args
    was = model.training
    with rnn_safe(model, inp) if not was else contextlib.nullcontext():  # cuDNN: backward in train mode
        h = model.forward_trunk(inp, mask)
        model.eval()
        (g,) = torch.autograd.grad(label_log_prob(model.forward_head(h, mask), y), inp, retain_graph=True)
    model.train(was)
    return g, model.forward_head(h, mask)


def forward_pair(model: nn.Module, b: Batch, u: torch.Tensor, v: torch.Tensor):
    """The logits of inputs u and v. Without BatchNorm the two batches go through as one (2B, ...)
    batch: the same numbers for less time (bigger matrix products, half the kernel calls). With
    BatchNorm they stay separate, so each keeps its own batch statistics."""
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return b.logits(u), b.logits(v)
    args = tuple(torch.cat([a, a]) for a in b.args)
    return b.fwd(torch.cat([u, v]), *args).chunk(2)


class StandardLoss:
    """Plain cross-entropy, with the same call and the same `parts` as the SGT losses."""

    def __call__(self, model, x, y, valid=None):
        logits = model(x)
        ce = F.cross_entropy(logits, y)
        return _with_parts(ce, logits, ce=ce, kl=torch.zeros((), device=ce.device))


class SGTLoss:
    """Algorithm 1 of Ismail et al. 2021: CE(f(X), y) + λ·KL(p(X) ‖ p(X̃)).

    X̃ is X with each sample's k = floor(mask_frac x valid features) lowest-saliency features
    replaced by `fill`. The clean branch is not detached: the KL term's gradient flows through
    f(X) as well as f(X̃).

    layout: image | series | tokens (or a layout object); sign: how the gradient becomes a score
    (image/series: abs | signed; tokens: sum | abs-sum | l2 | grad-x-input; default the layout's);
    fill: a name from the layout's fills (default: random for images and series,
    previous-salient for tokens) or fn(inp, mask, generator, ctx); saliency_pass: eval |
    shared; background: for fill="background", the dataset's sampler (n, generator) -> (n, T, F).
    """

    def __init__(self, mask_frac: float = 0.5, kl_weight: float = 1.0, fill=None, layout="image",
                 sign: str | None = None, saliency_pass: str = "eval", background=None):
        if not 0.0 <= mask_frac < 1.0:
            raise UsageError(f"mask_frac must be in [0, 1), got {mask_frac}")
        if saliency_pass not in SALIENCY_PASSES:
            raise unknown_name("saliency pass", saliency_pass, SALIENCY_PASSES)
        self.layout = get_layout(layout)
        self.mask_frac, self.kl_weight, self.saliency_pass = mask_frac, kl_weight, saliency_pass
        self.sign = sign or self.layout.default_sign
        self.fill = get_fill(self.layout, fill or self.layout.default_fill)
        self.background = background
        if self.sign not in self.layout.signs:
            raise unknown_name(f"{self.layout.name} saliency reduction", self.sign, self.layout.signs)

    def masked(self, model, b: Batch, inp: torch.Tensor, y: torch.Tensor):
        """(X̃, logits of inp): inp with its lowest-saliency features filled, and inp's logits."""
        g, logits = saliency_pass(model, Batch(inp, b.fwd, b.args, b.valid), y, self.saliency_pass)
        m = lowest_k(self.layout.score(g, inp, self.sign), self.mask_frac, b.valid)  # (B, N)
        ctx = {"model": model, "valid": b.valid, "background": self.background}
        return apply_fill(self.layout, inp, m, self.fill, ctx=ctx), logits

    def __call__(self, model, x, y, valid=None):
        b = self.layout.batch(model, x, valid)
        x_masked, logits = self.masked(model, b, b.inp, y)  # (B, ...), (B, classes)
        logits_masked = b.logits(x_masked)
        ce = F.cross_entropy(logits, y)
        div = kl(logits, logits_masked)
        return _with_parts(ce + self.kl_weight * div, logits, ce=ce, kl=div)


class ASGTLoss(SGTLoss):
    """Algorithm 2 of Guesmi et al. 2024: CE(f(X), y) + CE(f(X'), y) + λ·KL(p(X̃') ‖ p(X)).

    X' = attack(X) within eps (pgd: `steps` steps of `step_size` from a random start; fgsm: one
    step), run with the model in eval mode (dropout off, as at test time); X' is a constant, no
    gradient flows through the attack. X̃' is X' with its lowest-saliency features masked by
    SGT's rules. The KL direction is the one printed in Algorithm 2: the masked adversarial
    distribution first; SGT's is the reverse. `bounds` is the valid input range the attack
    clips to ((0, 1) for images; None: no clipping). Images and series only.
    """

    def __init__(self, mask_frac=0.5, kl_weight=1.0, fill=None, layout="image", sign=None,
                 saliency_pass="eval", attack="pgd", eps=0.3, steps=10, step_size=0.05,
                 bounds=(0.0, 1.0), background=None):
        super().__init__(mask_frac, kl_weight, fill, layout, sign, saliency_pass, background)
        if self.layout.name == "tokens":
            raise UsageError("ASGT is for images and series: an adversarial embedding is not a text")
        self.attack, self.eps, self.steps, self.step_size, self.bounds = attack, eps, steps, step_size, bounds

    def __call__(self, model, x, y, valid=None):
        b = self.layout.batch(model, x, valid)
        was = model.training
        model.eval()
        with rnn_safe(model, b.inp):
            x_adv = attacks.run_attack(self.attack, model, b.inp, y, self.eps, steps=self.steps,
                                       step_size=self.step_size, bounds=self.bounds)  # detached
        model.train(was)
        x_masked, logits_adv = self.masked(model, b, x_adv, y)  # X̃', f(X')
        logits, logits_masked = forward_pair(model, b, b.inp, x_masked)
        ce = F.cross_entropy(logits, y)
        ce_adv = F.cross_entropy(logits_adv, y)
        div = kl(logits_masked, logits)  # KL(p(X̃') || p(X))
        return _with_parts(ce + ce_adv + self.kl_weight * div, logits, ce=ce, kl=div, adv_ce=ce_adv)

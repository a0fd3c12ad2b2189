"""What a training config chooses, apart from the model and the data: the trainer's loss
object, the optimiser and its schedule, the augmentation and the precision. train.py's loop
runs whatever these give it."""

from __future__ import annotations

import contextlib

import torch

from .config import TrainConfig
from .data import get_dataset
from .sgt import ASGTLoss, SGTLoss, StandardLoss

LOSSES = {"standard": StandardLoss, "sgt": SGTLoss, "asgt": ASGTLoss}


def make_loss(cfg: TrainConfig, data=None):
    """The trainer of cfg as a loss object: StandardLoss, SGTLoss or ASGTLoss with its settings."""
    if cfg.trainer == "standard":
        return StandardLoss()
    spec = get_dataset(cfg.dataset, cfg.data_dir)
    kw = dict(mask_frac=cfg.mask_frac, kl_weight=cfg.kl_weight, fill=cfg.mask_fill, layout=spec.layout,
              sign=cfg.saliency_sign, saliency_pass=cfg.saliency_pass,
              background=(data.extras.get("background") if data is not None else None))
    if cfg.trainer == "sgt":
        return SGTLoss(**kw)
    return ASGTLoss(**kw, attack=cfg.adv_attack, eps=cfg.adv_eps, steps=cfg.adv_steps,
                    step_size=cfg.adv_step_size, bounds=spec.bounds)


def make_optimizer(cfg: TrainConfig, model):
    """adadelta: the authors' MNIST choice, StepLR gamma 0.7 per epoch (PyTorch's MNIST example;
    the authors' own recipe, `--recipe authors`, has no schedule); sgd: momentum 0.9, weight
    decay 5e-4, cosine schedule over the epochs; adam: constant lr."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adadelta":
        opt = torch.optim.Adadelta(params, lr=cfg.lr)
        if getattr(cfg, "recipe", None) == "authors":
            return opt, None
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=5e-4)
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    return torch.optim.Adam(params, lr=cfg.lr), None


def crop_flip(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """The CIFAR augmentation (random crop with zero padding 4, then a horizontal flip with
    probability 1/2), on a whole batch (B, C, H, W) at once: one padded copy, one gather, one
    where. Offsets and flips come from the global RNG, which the loop seeds every epoch."""
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dr = torch.randint(0, 2 * pad + 1, (b,), device=x.device)
    dc = torch.randint(0, 2 * pad + 1, (b,), device=x.device)
    rows = (dr[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dc[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    out = padded[torch.arange(b, device=x.device)[:, None, None, None], torch.arange(c, device=x.device)[None, :, None, None],
                 rows, cols]  # (B, C, H, W)
    flip = torch.rand(b, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


AUGMENTATIONS = {"crop-flip": crop_flip}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """Mixed precision for the forward passes (the saliency ranking and the masking stay in
    float32: they work on x and on its gradient, which autocast leaves in float32)."""
    dtype = PRECISIONS[precision or "fp32"]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)

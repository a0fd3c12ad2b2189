"""ATTACKS registry: name -> fn(model, x, y, eps, ..., generator=None) -> x_adv.

Untargeted L-inf attacks on whole batches in the model's input space: images x (B, C, H, W) in
[0, 1], or series (B, T, F); labels y (B,). Every x_adv lies in the eps-ball around x and within
`bounds` (default (0, 1), the pixel range; None for data without a fixed range). They follow torchattacks 3.5.1
(fgsm.py, pgd.py, mifgsm.py) step for step, without its base class: our models carry their
normalisation as their first layer, so no normalisation handling is needed here.

The attack uses the model in whatever mode it is in; callers choose (eval by default:
evaluate.attack_eval and the asgt trainer put the model in eval mode, dropout off). Input
gradients come from torch.autograd.grad on a detached leaf, so the parameters' .grad fields are
never touched. The loss is the summed cross-entropy: its sign is that of torchattacks' mean, and
a sample's step does not depend on the rest of its batch.

Speed: on CPU the batch is processed in sub-batches of CPU_CHUNK samples (every step of a
sub-batch, then the next). A sample's result is the same either way (eval mode, per-sample
loss). The sub-batches bound memory; they once also kept each activation under glibc's mmap
threshold, but sgtool.tune_malloc now keeps freed memory for reuse, and larger sub-batches run
faster (PGD-40 at batch 512 on mnist-cnn: 128 -> 512 gave ~1.15x). On CUDA the whole batch goes
at once. Callers that only need input gradients should pass a models.freeze()d model.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from .errors import unknown_name

CPU_CHUNK = 512


def _slices(x: torch.Tensor):
    n = len(x)
    c = CPU_CHUNK if x.device.type == "cpu" else max(n, 1)
    return [slice(i, i + c) for i in range(0, n, c)]


def _loss_grad(model, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d CE_sum(model(x_adv), y) / d x_adv. detach() shares x_adv's memory: no copy."""
    xr = x_adv.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
    return g


def predict(model, x: torch.Tensor) -> torch.Tensor:
    """Predicted classes (B,), by the same sub-batches as the attacks. The forward passes run in
    inference mode; the result is an ordinary tensor, usable as labels of a later attack."""
    with torch.inference_mode():
        parts = [model(x[s]).argmax(1) for s in _slices(x)]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long, device=x.device)


def fgsm(model, x: torch.Tensor, y: torch.Tensor, eps: float, generator=None, bounds=(0.0, 1.0)) -> torch.Tensor:
    """Goodfellow et al. 2015: one step of size eps along the sign of the input gradient."""
    x_adv = x.detach().clone()
    for s in _slices(x_adv):
        g = _loss_grad(model, x_adv[s], y[s])
        with torch.no_grad():
            x_adv[s].add_(g.sign_(), alpha=eps)
            if bounds is not None:
                x_adv[s].clamp_(*bounds)
    return x_adv


def _box(x: torch.Tensor, eps: float, bounds=(0.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """The projection bounds: the eps-ball intersected with the bounds, (x - eps) v lo and (x + eps) ^ hi."""
    if bounds is None:
        return x - eps, x + eps
    return (x - eps).clamp_(min=bounds[0]), (x + eps).clamp_(max=bounds[1])


def _iterate(model, y, x_adv, lo, hi, steps: int, step_size: float, decay: float | None = None):
    """The loop of PGD (decay=None) and MI-FGSM, in place on x_adv (B, C, H, W): a signed step,
    then the projection on [lo, hi] (one clamp instead of torchattacks' two)."""
    for s in _slices(x_adv):
        xa, ys, ls, hs = x_adv[s], y[s], lo[s], hi[s]  # views: updates land in x_adv
        momentum = torch.zeros_like(xa) if decay is not None else None
        for _ in range(steps):
            g = _loss_grad(model, xa, ys)
            with torch.no_grad():
                if momentum is not None:
                    # Dong et al. 2018: the gradient over its per-sample mean |g| (torchattacks'
                    # L1 normalisation) accumulates with decay mu; the floor keeps an all-zero
                    # gradient from turning into NaN.
                    g.div_(g.abs().mean(dim=tuple(range(1, g.dim())), keepdim=True).clamp_min_(1e-30))
                    g = momentum.mul_(decay).add_(g)
                    xa.add_(g.sign(), alpha=step_size)
                else:
                    xa.add_(g.sign_(), alpha=step_size)
                torch.clamp(xa, ls, hs, out=xa)
    return x_adv


def pgd(model, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 40, step_size: float = 0.01,
        random_start: bool = True, restarts: int = 1, generator=None, bounds=(0.0, 1.0)) -> torch.Tensor:
    """Madry et al. 2018: `steps` signed-gradient steps, each projected on the eps-ball.

    random_start draws the start uniformly in the eps-ball (then clips to [0, 1]). With
    restarts > 1, each further restart attacks only the samples that no restart has fooled
    yet, so each sample keeps the first restart that fools the model (else the last one)."""
    x = x.detach()
    lo, hi = _box(x, eps, bounds)
    x_best = None
    todo = torch.arange(len(x), device=x.device)  # samples no restart has fooled yet
    for r in range(restarts):
        xs, ys, ls, hs = (x, y, lo, hi) if r == 0 else (x[todo], y[todo], lo[todo], hi[todo])
        if random_start:
            x_adv = torch.rand(xs.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_adv.mul_(2 * eps).sub_(eps).add_(xs)
            torch.clamp(x_adv, ls, hs, out=x_adv)
        else:
            x_adv = xs.clone()
        _iterate(model, ys, x_adv, ls, hs, steps, step_size)
        if restarts == 1:
            return x_adv
        if r == 0:
            x_best = x_adv
        else:
            x_best[todo] = x_adv
        todo = todo[predict(model, x_adv) == ys]
        if len(todo) == 0:
            break
    return x_best


def mifgsm(model, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 10, step_size: float = 0.01,
           decay: float = 1.0, generator=None, bounds=(0.0, 1.0)) -> torch.Tensor:
    """Dong et al. 2018 (MI-FGSM): signed steps along a momentum of normalised gradients,
    projected on the eps-ball; it starts at x."""
    x = x.detach()
    lo, hi = _box(x, eps, bounds)
    return _iterate(model, y, x.clone(), lo, hi, steps, step_size, decay=decay)


ATTACKS = {"fgsm": fgsm, "pgd": pgd, "mifgsm": mifgsm}


def get_attack(name: str):
    if name not in ATTACKS:
        raise unknown_name("attack method", name, ATTACKS)
    return ATTACKS[name]


def run_attack(name: str, model, x: torch.Tensor, y: torch.Tensor, eps: float, **params) -> torch.Tensor:
    """ATTACKS[name] with those of `params` that it takes (steps, step_size, restarts, decay,
    random_start, generator, bounds), so one call site serves every attack."""
    fn = get_attack(name)
    accepted = inspect.signature(fn).parameters
    return fn(model, x, y, eps, **{k: v for k, v in params.items() if k in accepted})

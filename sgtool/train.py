"""One visible training loop; the trainers (standard, sgt, asgt) are loss functions plugged in.

A loss function is fn(model, x, y, cfg, k) -> (loss, clean_logits, parts), where x is a batch
(B, C, H, W) in pixel space, k the number of positions to mask, and parts a dict of floats
(ce, kl) logged per epoch. The model is in train mode when it is called.
"""

from __future__ import annotations

import platform
import socket
import time
from datetime import datetime, timezone

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import __version__
from .config import TrainConfig, config_hash, mask_k, to_dict
from .data import get_dataset, load
from .errors import SgtoolError
from .models import MaxPool2d, Normalize, build, max_pool2d, pool_args
from .saliency import input_gradient, label_log_prob, mask_lowest, position_score
from .store import (
    CKPT,
    CKPT_META,
    CONFIG,
    METRICS,
    MODEL,
    RUN,
    check_writable,
    load_checkpoint,
    make_root,
    read_metrics,
    run_lock,
    runs_root,
    save_checkpoint,
    save_tensors,
    write_csv,
    write_json,
    write_yaml,
)

# --------------------------------------------------------------------------- losses


def kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) from logits, batchmean: sum_c p (log p - log q), averaged over the batch."""
    return F.kl_div(F.log_softmax(logits_q, 1), F.log_softmax(logits_p, 1), reduction="batchmean", log_target=True)


def standard_loss(model, x, y, cfg: TrainConfig, k: int):
    logits = model(x)
    ce = F.cross_entropy(logits, y)
    return ce, logits, {"ce": ce.item(), "kl": 0.0}


def forward_pair(model, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """model(a), model(b). Without BatchNorm the two batches go through as one (2B, ...) batch:
    the same numbers for less time on a CPU (bigger matrix products, half the kernel calls).
    With BatchNorm they stay separate, so each keeps its own batch statistics."""
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model(a), model(b)
    return model(torch.cat([a, b])).chunk(2)


# Layers that compute the same thing in train and eval mode. A model's leading run of them (its
# "trunk") gives the same activations in both modes, so the eval-mode saliency pass and the
# train-mode forward can share it.
MODE_FREE = (Normalize, nn.Conv1d, nn.Conv2d, nn.Linear, nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid,
             nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveMaxPool2d,
             nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity)


def split_trunk(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(trunk, head): the model's layers (nested Sequentials flattened) cut before the first
    layer that is not in MODE_FREE (Dropout, BatchNorm, any custom module). Running trunk then
    head is running the model."""
    flat: list[nn.Module] = []

    def walk(m):
        if type(m) is nn.Sequential:
            for child in m:
                walk(child)
        else:
            flat.append(m)

    walk(model)
    i = next((j for j, m in enumerate(flat) if not isinstance(m, MODE_FREE)), len(flat))
    return flat[:i], flat[i:]


def _run(layers: list[nn.Module], h: torch.Tensor) -> torch.Tensor:
    for m in layers:
        h = m(h)
    return h


def conv_input_grad(conv: nn.Conv2d, g: torch.Tensor, in_hw: tuple[int, int]) -> torch.Tensor:
    """(B, C_in, H, W): the gradient of <g, conv(x)> with respect to x for g (B, C_out, H', W'),
    i.e. conv's transposed convolution, as one matrix product and kh*kw strided adds (a col2im).
    oneDNN's own input gradient is slow when the input has few channels: for mnist-cnn's first
    layer and a batch of 512 it takes 15 ms, this 6 ms. It equals autograd's to float rounding."""
    b, c_out, ho, wo = g.shape
    kh, kw = conv.kernel_size
    (sh, sw), (dh, dw), (ph, pw) = conv.stride, conv.dilation, conv.padding
    h, w = in_hw
    wt = conv.weight.detach().reshape(c_out, -1).t()  # (C_in*kh*kw, C_out)
    cols = torch.matmul(wt, g.reshape(b, c_out, ho * wo)).view(b, conv.in_channels, kh, kw, ho, wo)
    out = g.new_zeros(b, conv.in_channels, h + 2 * ph, w + 2 * pw)  # the padded input
    for i in range(kh):  # a loop over the kernel's taps, not over samples
        for j in range(kw):
            out[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw] += cols[:, :, i, j]
    return out[:, :, ph: ph + h, pw: pw + w]


def _plain_conv(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.groups == 1 and m.padding_mode == "zeros"
            and isinstance(m.padding, tuple))


def _plain_pool(m: nn.Module | None) -> bool:
    return type(m) in (nn.MaxPool2d, MaxPool2d) and not m.return_indices


def _conv_vjp(conv: nn.Conv2d, inp: torch.Tensor):
    """g (B, C_out, H', W') -> d<g, conv(inp)>/d inp: the data half of the convolution backward,
    the call autograd itself makes when only the input gradient is wanted."""
    w = conv.weight.detach()
    return lambda g: torch.ops.aten.convolution_backward(
        g, inp, w, None, conv.stride, conv.padding, conv.dilation, False, (0, 0), 1,
        (True, False, False))[0]


def _pool_vjp(pool: nn.MaxPool2d, inp: torch.Tensor, idx: torch.Tensor):
    """g (B, C, h, w) at the pooled output -> (B, C, H, W) at its input, by the argmax indices."""
    args = pool_args(pool)
    return lambda g: torch.ops.aten.max_pool2d_with_indices_backward(g, inp, *args, idx)


def _relu_vjp(out: torch.Tensor):
    """g -> g where the ReLU's output is > 0, else 0: what autograd's ReluBackward does."""
    return lambda g: torch.ops.aten.threshold_backward(g, out, 0)


def _saliency_start(trunk: list[nn.Module], x: torch.Tensor):
    """(h, rest, to_input): where the saliency's autograd backward may stop, and how to finish
    it by hand. Both passes use it, so SGT and ASGT both get it.

    A trunk that opens with [Normalize,] Conv2d (mnist-cnn, small-cnn, the ResNets' stem) runs
    that convolution, then any run of plain Conv2d, ReLU and MaxPool2d layers after it, here:
    with their graph, which the loss's backward uses, and a record of what each layer's input
    gradient needs. h is the last of these outputs and rest the trunk after it. to_input maps
    d/dh to d/dx with the same kernels autograd calls, except in two places:
    - the first convolution's input is the constant x, so autograd never takes its input
      gradient; `conv_input_grad` does, one matrix product and a col2im, because oneDNN's is slow
      for few input channels (15 ms against 6 ms on mnist-cnn's first layer at batch 512);
    - a ReLU followed by a max-pool applies its mask at the pooled size. The pooled value is the
      ReLU output at the argmax, so zeroing the pooled gradient where it is <= 0 zeroes exactly
      what the ReLU's own backward would: the same numbers, on 4x fewer values on mnist-cnn.
    Any other trunk gives h = x itself, requiring grad, and autograd does all the work."""
    i, pre, std = 0, x.detach(), None
    if trunk and isinstance(trunk[0], Normalize):
        pre, std, i = trunk[0](pre), trunk[0].std, 1  # (B, C, H, W), std (1, C, 1, 1)
    if i >= len(trunk) or not _plain_conv(trunk[i]):
        xr = x.detach().requires_grad_(True)
        return xr, trunk, lambda g: g
    conv, hw = trunk[i], tuple(x.shape[-2:])
    h = conv(pre)  # (B, C_out, H', W')
    vjps = []  # the input-gradient step of each layer after the first convolution, in order
    i += 1
    while i < len(trunk):
        m = trunk[i]
        nxt = trunk[i + 1] if i + 1 < len(trunk) else None
        if type(m) is nn.ReLU and _plain_pool(nxt):
            r = m(h)
            h, idx = max_pool2d(nxt, r)
            relu, pool = _relu_vjp(h.detach()), _pool_vjp(nxt, r.detach(), idx)
            vjps.append(lambda g, relu=relu, pool=pool: pool(relu(g)))
            i += 2
            continue
        if type(m) is nn.ReLU:
            h = m(h)
            vjps.append(_relu_vjp(h.detach()))
        elif _plain_pool(m):
            inp = h
            h, idx = max_pool2d(m, inp)
            vjps.append(_pool_vjp(m, inp.detach(), idx))
        elif _plain_conv(m):
            inp = h
            h = m(inp)
            vjps.append(_conv_vjp(m, inp.detach()))
        else:
            break
        i += 1
    if not h.requires_grad:  # a frozen prefix: h is then where the graph starts
        h.requires_grad_(True)

    def to_input(g: torch.Tensor) -> torch.Tensor:
        for vjp in reversed(vjps):
            g = vjp(g)
        gx = conv_input_grad(conv, g, hw)
        return gx / std if std is not None else gx

    return h, trunk[i:], to_input


def _label_grad(logits: torch.Tensor, y: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """d sum_i log p(y_i | x_i) / d at, keeping the graph for the loss's own backward."""
    return torch.autograd.grad(label_log_prob(logits, y), at, retain_graph=True)[0]


def eval_pass(model, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """saliency_pass="eval": (g, logits), g = d log p(y|x)/dx with the model in eval mode (the
    authors' saliency, dropout off) and the train-mode logits of x, sharing one forward pass of
    the model's mode-free trunk (on mnist-cnn: both convolutions and the max-pool, nearly all of
    its cost). Only the head runs twice, once per mode. The numbers are those of a separate eval
    pass followed by a train-mode forward; a model with no trunk gets exactly that."""
    trunk, head = split_trunk(model)
    if not trunk:
        model.eval()
        g = input_gradient(model, x, y)  # (B, C, H, W)
        model.train()
        return g, model(x)
    start, rest, to_input = _saliency_start(trunk, x)
    h = _run(rest, start)  # (B, ...) shared by both modes, with its graph
    for m in head:
        m.eval()
    logits_eval = _run(head, h)  # (B, classes)
    for m in head:
        m.train()
    return to_input(_label_grad(logits_eval, y, start)), _run(head, h)


def shared_forward(model, x: torch.Tensor):
    """(start, logits, to_input): shared_pass's train-mode forward, before its saliency backward
    `to_input(_label_grad(logits, y, start))`."""
    trunk, head = split_trunk(model)
    start, rest, to_input = _saliency_start(trunk, x)
    return start, _run(head, _run(rest, start)), to_input  # logits (B, classes), train mode


def shared_pass(model, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """saliency_pass="shared": (g, logits) from the training forward pass itself, so dropout is
    active in the saliency."""
    start, logits, to_input = shared_forward(model, x)
    return to_input(_label_grad(logits, y, start)), logits


SALIENCY_PASSES = {"eval": eval_pass, "shared": shared_pass}


def sgt_loss(model, x, y, cfg: TrainConfig, k: int):
    """Algorithm 1 of Ismail et al. 2021: CE(f(X), y) + λ·KL(p(X) || p(X~)).

    X~ is X with the k lowest-saliency positions (input gradient of log p(y|x), averaged over
    channels) replaced in every channel. The clean branch is not detached.
    saliency_pass="eval": the authors' scheme, the saliency with the model in eval mode
    (dropout off), sharing the mode-free trunk with the training forward (eval_pass).
    saliency_pass="shared": the gradient is taken from the training forward pass itself;
    dropout is then active in the saliency (shared_pass).
    """
    g, logits = SALIENCY_PASSES[cfg.saliency_pass](model, x, y)  # (B, C, H, W), (B, classes)
    x_masked = mask_lowest(x, position_score(g, cfg.saliency_sign), k, cfg.mask_fill)
    logits_masked = model(x_masked)
    ce = F.cross_entropy(logits, y)
    div = kl(logits, logits_masked)
    return ce + cfg.kl_weight * div, logits, {"ce": ce.item(), "kl": div.item()}


def asgt_loss(model, x, y, cfg: TrainConfig, k: int):
    """Algorithm 2 of Guesmi et al. 2024 (ASGT): CE(f(X), y) + CE(f(X'), y) + λ·KL(p(X~') || p(X)).

    X' = attack(X) with the training attack (cfg.adv_attack within cfg.adv_eps; pgd takes
    cfg.adv_steps steps of cfg.adv_step_size from a random start). The attack runs with the model
    in eval mode (dropout off, as at test time and in `sgtool attack`); the model is back in
    train mode for the loss. X' is a constant: no gradient flows through the attack.
    X~' is X' with its k lowest-saliency positions masked in every channel (cfg.mask_fill); the
    saliency of X' follows the SGT rules (cfg.saliency_pass, cfg.saliency_sign).
    The KL direction is the one printed in Algorithm 2: KL(p(X~') || p(X)), masked adversarial
    first, i.e. kl(logits of X~', logits of X); SGT's term is the reverse, KL(p(X) || p(X~)).
    The clean branch is not detached.
    """
    from .attacks import run_attack

    model.eval()
    x_adv = run_attack(cfg.adv_attack, model, x, y, cfg.adv_eps, steps=cfg.adv_steps,
                       step_size=cfg.adv_step_size)  # (B, C, H, W), detached
    model.train()
    g, logits_adv = SALIENCY_PASSES[cfg.saliency_pass](model, x_adv, y)  # the saliency of X'
    x_masked = mask_lowest(x_adv, position_score(g, cfg.saliency_sign), k, cfg.mask_fill)
    logits, logits_masked = forward_pair(model, x, x_masked)
    ce = F.cross_entropy(logits, y)
    ce_adv = F.cross_entropy(logits_adv, y)
    div = kl(logits_masked, logits)  # KL(p(X~') || p(X))
    loss = ce + ce_adv + cfg.kl_weight * div
    return loss, logits, {"ce": ce.item(), "kl": div.item(), "adv_ce": ce_adv.item()}


LOSSES = {"standard": standard_loss, "sgt": sgt_loss, "asgt": asgt_loss}


# --------------------------------------------------------------------------- pieces


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SgtoolError("--device cuda asked for, but no CUDA device is available; use --device cpu")
    return torch.device(name)


def make_optimizer(cfg: TrainConfig, model):
    """adadelta: the authors' MNIST choice, StepLR gamma 0.7 per epoch (PyTorch's MNIST example);
    sgd: momentum 0.9, weight decay 5e-4, cosine schedule over the epochs; adam: constant lr."""
    params = model.parameters()
    if cfg.optimizer == "adadelta":
        opt = torch.optim.Adadelta(params, lr=cfg.lr)
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=5e-4)
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    return torch.optim.Adam(params, lr=cfg.lr), None


def train_step(model, opt, loss_fn, x, y, cfg: TrainConfig, k: int):
    """One optimiser step on batch (x, y): the whole of what a trainer changes is loss_fn."""
    loss, logits, parts = loss_fn(model, x, y, cfg, k)
    opt.zero_grad(set_to_none=True)
    # Only the parameters: the SGT/ASGT graphs start at an input that required grad (for the
    # saliency), and naming the inputs keeps autograd from computing its gradient again.
    loss.backward(inputs=[p for g in opt.param_groups for p in g["params"] if p.requires_grad])
    opt.step()
    return loss, logits, parts


@torch.no_grad()
def accuracy(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000, device=None) -> float:
    """Top-1 accuracy of model (eval mode) on tensors x (N, C, H, W), y (N,)."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size].to(device))
        correct += (logits.argmax(1).cpu() == y[i : i + batch_size]).sum().item()
    model.train(was_training)
    return correct / max(len(x), 1)


def epoch_seed(seed: int, epoch: int) -> int:
    """Every epoch reseeds all RNGs from (seed, epoch): a run resumed at an epoch boundary
    draws exactly what the uninterrupted run drew."""
    return seed * 1_000_003 + epoch


def _meta(status: str, started: str, wall: float, **extra) -> dict:
    return {
        "status": status, "started": started, "updated": datetime.now(timezone.utc).isoformat(),
        "wall_seconds": round(wall, 3), "sgtool_version": __version__, "torch_version": torch.__version__,
        "host": socket.gethostname(), "python": platform.python_version(), **extra,
    }


# --------------------------------------------------------------------------- the loop


def train_run(cfg: TrainConfig, force: bool = False, on_progress=None) -> dict:
    """Train the run of `cfg` (or resume it), storing everything under runs/<hash12>/.

    Returns {"id", "dir", "status", "test_acc", "already"}. `on_progress(**info)` is called
    after every step with epoch, epochs, step, steps, loss and acc, so the CLI can draw a bar.
    """
    root = runs_root(cfg.runs_dir)
    rid = config_hash(cfg)
    run_dir = root / rid
    if not force and (run_dir / RUN).is_file():
        try:
            import json

            status = json.loads((run_dir / RUN).read_text()).get("status")
        except (OSError, ValueError):
            status = None
        if status == "completed":
            rows = read_metrics(run_dir)
            acc = float(rows[-1]["test_acc"]) if rows else float("nan")
            return {"id": rid, "dir": run_dir, "status": "completed", "test_acc": acc, "already": True}

    # Everything that can fail on bad input happens before the run dir is touched.
    check_writable(root)
    device = pick_device(cfg.device)
    data = load(cfg.dataset, cfg.data_dir, cfg.train_size, cfg.test_size)
    spec = get_dataset(cfg.dataset)
    k = mask_k(cfg.mask_frac, spec.shape)
    loss_fn = LOSSES[cfg.trainer]

    make_root(root)
    run_dir.mkdir(exist_ok=True)
    with run_lock(run_dir):
        started = datetime.now(timezone.utc).isoformat()
        t_start = time.time()
        if force:
            for name in (CKPT, CKPT_META, METRICS, MODEL):
                (run_dir / name).unlink(missing_ok=True)
        write_yaml(run_dir / CONFIG, to_dict(cfg))
        write_json(run_dir / RUN, _meta("running", started, 0.0, id=rid))

        torch.manual_seed(cfg.seed)
        model = build(cfg.model, cfg.dataset).to(device)
        opt, sched = make_optimizer(cfg, model)
        rows, start = [], 1
        ckpt = load_checkpoint(run_dir, model, opt, sched)
        if ckpt is not None:
            last, rng = ckpt
            # Rows past the checkpoint belong to an epoch whose checkpoint was never written.
            rows = [r for r in read_metrics(run_dir) if int(r["epoch"]) <= last]
            start = last + 1
            if "cpu" in rng:
                torch.set_rng_state(rng["cpu"])

        xtr, ytr = data.x_train, data.y_train
        n, bs = len(xtr), cfg.batch_size
        steps = (n + bs - 1) // bs
        try:
            for epoch in range(start, cfg.epochs + 1):
                t0 = time.time()
                torch.manual_seed(epoch_seed(cfg.seed, epoch))
                perm = torch.randperm(n)
                model.train()
                tot = {"loss": 0.0, "ce": 0.0, "kl": 0.0, "correct": 0}
                for step in range(steps):
                    idx = perm[step * bs : (step + 1) * bs]
                    x, y = xtr[idx].to(device), ytr[idx].to(device)
                    loss, logits, parts = train_step(model, opt, loss_fn, x, y, cfg, k)
                    b = len(idx)
                    tot["loss"] += loss.item() * b
                    tot["ce"] += parts["ce"] * b
                    tot["kl"] += parts["kl"] * b
                    tot["correct"] += (logits.argmax(1) == y).sum().item()
                    if on_progress:
                        seen = min((step + 1) * bs, n)
                        on_progress(epoch=epoch, epochs=cfg.epochs, step=step + 1, steps=steps,
                                    loss=tot["loss"] / seen, acc=tot["correct"] / seen)
                if sched is not None:
                    sched.step()
                test_acc = accuracy(model, data.x_test, data.y_test, device=device)
                rows.append({
                    "epoch": epoch, "train_loss": round(tot["loss"] / n, 6), "train_ce": round(tot["ce"] / n, 6),
                    "train_kl": round(tot["kl"] / n, 6), "train_acc": round(tot["correct"] / n, 6),
                    "test_acc": round(test_acc, 6), "seconds": round(time.time() - t0, 3),
                })
                write_csv(run_dir / METRICS, rows)
                save_checkpoint(run_dir, model, opt, sched, epoch, {"cpu": torch.get_rng_state()})
                write_json(run_dir / RUN, _meta("running", started, time.time() - t_start, id=rid, epoch=epoch))
        except KeyboardInterrupt:
            write_json(run_dir / RUN, _meta("interrupted", started, time.time() - t_start, id=rid,
                                            epoch=len(rows)))
            raise
        except BaseException as e:
            write_json(run_dir / RUN, _meta("failed", started, time.time() - t_start, id=rid,
                                            error=f"{type(e).__name__}: {e}"))
            raise
        save_tensors(run_dir / MODEL, model.state_dict())
        test_acc = float(rows[-1]["test_acc"])
        write_json(run_dir / RUN, _meta("completed", started, time.time() - t_start, id=rid, epoch=cfg.epochs,
                                        test_acc=test_acc))
    return {"id": rid, "dir": run_dir, "status": "completed", "test_acc": test_acc, "already": False}


def load_model(run: dict, device: str | torch.device = "cpu"):
    """A stored run's model (from store.read_run/find_run), in eval mode, on device."""
    from .config import from_dict
    from .store import load_tensors

    cfg = from_dict(run["config"])
    model = build(cfg.model, cfg.dataset)
    model.load_state_dict(load_tensors(run["dir"] / MODEL))
    return model.to(device).eval(), cfg

"""The one visible training loop. The trainers are loss objects (sgt.py) plugged into it:

    loss = loss_fn(model, x, y, valid)     # StandardLoss, SGTLoss or ASGTLoss
    loss.backward(); opt.step()            # train_step

`train_run(cfg)` trains the run of a config (or resumes it) into the run store: `start` finds or
resumes the run, `run_epoch` is train_step over a seeded permutation, `end_epoch` scores and
checkpoints, `finish` keeps the chosen epoch's weights. The data is held as tensors on the device
(cifar10-airbench's way): an epoch is a seeded permutation of indices. Loss and accuracy sums
stay on the device; the host reads them once per epoch, and every few steps for the progress bar
on a GPU (every step on a CPU, where reading is free).
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import torch

from . import __version__
from . import distributed as ddp
from .config import VAL_SELECTS, TrainConfig, config_hash, to_dict
from .data import get_dataset
from .data.registry import class_warnings
from .errors import SgtoolError
from .layout import n_masked
from .recipe import AUGMENTATIONS, autocast, make_loss, make_optimizer
from .runs import build_model, check_output, load_data, pick_device, split_scores, trim
from .store import (
    BEST,
    CKPT,
    CKPT_META,
    CONFIG,
    METRICS,
    MODEL,
    RUN,
    check_writable,
    damage,
    load_checkpoint,
    load_tensors,
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


def trainable(opt) -> list[torch.Tensor]:
    return [p for g in opt.param_groups for p in g["params"] if p.requires_grad]


def train_step(model, opt, loss_fn, x, y, valid=None, *, amp=contextlib.nullcontext, scaler=None, sync=None):
    """One optimiser step on batch (x, y): the whole of what a trainer changes is loss_fn.
    amp() is the forward passes' autocast, scaler fp16's GradScaler, sync(params) the processes'
    gradient all-reduce."""
    with amp():
        loss = loss_fn(model, x, y, valid)
    opt.zero_grad(set_to_none=True)
    params = trainable(opt)
    # Only the parameters: the SGT/ASGT graphs start at an input that required grad (for the
    # saliency), and naming the inputs keeps autograd from computing its gradient again.
    (scaler.scale(loss) if scaler else loss).backward(inputs=params)
    if sync is not None:
        sync(params)
    if scaler:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    return loss


def bucketed(perm: torch.Tensor, lengths: torch.Tensor, batch_size: int, pool: int = 50) -> torch.Tensor:
    """An epoch's permutation reordered so that each batch holds documents of similar length:
    the permutation is cut into pools of `pool` batches, each pool is sorted by length and cut
    into batches, and the batches are shuffled (from the global RNG, seeded per epoch). Every
    document still appears once per epoch; a batch pads to its own longest document only."""
    size = pool * batch_size
    chunks = [c[lengths[c].argsort(descending=True, stable=True)] for c in perm.split(size)]
    batches = [b for c in chunks for b in c.split(batch_size)]
    order = torch.randperm(len(batches))
    return torch.cat([batches[i] for i in order.tolist()])


def epoch_seed(seed: int, epoch: int) -> int:
    """Every epoch reseeds all RNGs from (seed, epoch): a run resumed at an epoch boundary
    draws exactly what the uninterrupted run drew."""
    return seed * 1_000_003 + epoch


def check_data(cfg: TrainConfig, data) -> None:
    """What only the loaded data can tell: SGT must mask at least one feature of every sample
    (fixed-size images and series are checked with the config)."""
    spec = get_dataset(cfg.dataset, cfg.data_dir)
    if cfg.select in VAL_SELECTS and "x_val" not in data.extras:
        raise SgtoolError(f"--select {cfg.select} needs a validation split, and {cfg.dataset} has none; "
                          "use --select last")
    x, valid = data.x_train, data.valid_train
    if cfg.trainer == "standard" or (valid is None and spec.layout != "tokens"):
        return
    if spec.layout == "tokens":
        real = x != data.extras.get("pad_id", 0)  # (N, L)
        n = (real if valid is None else valid & real).sum(1)
    else:
        n = valid.sum(1) * x.shape[2]  # valid steps x features
    if len(n) and int(n_masked(cfg.mask_frac, n).min()) == 0:
        raise SgtoolError(f"--mask-frac {cfg.mask_frac} masks 0 features of the shortest sample "
                          f"({int(n.min())} features); use a larger fraction or --trainer standard")


def _meta(status: str, started: str, wall: float, **extra) -> dict:
    return {
        "status": status, "started": started, "updated": datetime.now(timezone.utc).isoformat(),
        "wall_seconds": round(wall, 3), "sgtool_version": __version__, "torch_version": torch.__version__,
        "host": socket.gethostname(), "python": platform.python_version(), **extra,
    }


# --------------------------------------------------------------------------- the loop


@dataclass
class Run:
    """A run being trained: its config, directory, model, data on the device, and the epochs so far."""
    cfg: TrainConfig
    id: str
    dir: object
    model: torch.nn.Module
    fwd: torch.nn.Module  # the module the loss calls: the model, or its torch.compile
    opt: torch.optim.Optimizer
    sched: object
    scaler: object
    loss_fn: object
    data: object
    device: torch.device
    rank: int
    world: int
    rows: list = field(default_factory=list)  # metrics.csv's rows of the finished epochs
    best: float = -math.inf
    warnings: list = field(default_factory=list)  # for the caller to show: the data's, the loop's
    started: str = ""
    t_start: float = 0.0

    @property
    def lead(self) -> bool:  # process 0 alone writes the store
        return self.rank == 0

    def score(self, r: dict) -> float:
        """The kept epoch's criterion, higher is better: the best test accuracy (--recipe authors, as
        the authors' train_MNIST.py), the best validation accuracy (--select val), the lowest
        validation NLL (--select val-loss)."""
        crit = VAL_SELECTS.get(self.cfg.select, "test_acc")
        return (-1.0 if crit == "val_loss" else 1.0) * float(r[crit])

    @property
    def keeps_best(self) -> bool:
        return self.cfg.recipe == "authors" or self.cfg.select in VAL_SELECTS


def resume(run: Run) -> int:
    """Restore the last finished epoch's checkpoint, if any; the first epoch still to train."""
    ckpt = load_checkpoint(run.dir, run.model, run.opt, run.sched)  # every process reads the same checkpoint
    if ckpt is None:
        return 1
    last, rng = ckpt
    # Rows past the checkpoint belong to an epoch whose checkpoint was never written.
    run.rows = [r for r in read_metrics(run.dir) if int(r["epoch"]) <= last]
    run.best = max((run.score(r) for r in run.rows), default=-math.inf)
    if "cpu" in rng:
        torch.set_rng_state(rng["cpu"])
    return last + 1


def run_epoch(run: Run, epoch: int, on_progress=None) -> list[float]:
    """One epoch of train_step over a seeded permutation: this process's sums of loss, CE, KL and
    correct predictions, over the samples it trained on."""
    cfg, device, world, rank = run.cfg, run.device, run.world, run.rank
    xtr, ytr = run.data["x"], run.data["y"]
    vtr, lengths = run.data["valid"], run.data["lengths"]
    n, bs = len(xtr), cfg.batch_size
    pad = getattr(run.model, "pad_id", 0)
    augment = AUGMENTATIONS.get(cfg.augment or "none")
    channels_last = device.type == "cuda" and get_dataset(cfg.dataset, cfg.data_dir).layout == "image"
    steps = (n + bs - 1) // bs
    every = 1 if device.type == "cpu" else 25  # steps between host reads for the bar
    torch.manual_seed(epoch_seed(cfg.seed, epoch))
    perm = torch.randperm(n).to(device)  # the same on every process
    if lengths is not None:  # text: batches of similar length, so padding does not dominate
        perm = bucketed(perm, lengths, bs)
    run.model.train()
    tot = torch.zeros(4, dtype=torch.float64, device=device)  # loss, ce, kl, correct; float64 as the host's
    amp = lambda: autocast(device, cfg.precision)  # noqa: E731
    bad = torch.full((), -1, dtype=torch.long, device=device)  # the first step whose loss was not finite
    for step in range(steps):
        batch = perm[step * bs : (step + 1) * bs]
        idx = batch.tensor_split(world)[rank] if world > 1 else batch  # this process's share
        x, y = trim(xtr[idx], pad), ytr[idx]
        if augment is not None:
            x = augment(x)
        if channels_last:  # cuDNN's convolutions prefer channels-last
            x = x.contiguous(memory_format=torch.channels_last)
        v = None if vtr is None else vtr[idx][:, : x.shape[1]]
        sync = (lambda ps, w=len(idx) / max(len(batch), 1): ddp.average_gradients(ps, w)) if world > 1 else None
        loss = train_step(run.fwd, run.opt, run.loss_fn, x, y, v, amp=amp, scaler=run.scaler, sync=sync)
        b = len(idx)
        tot += torch.stack([loss.detach().double() * b, loss.parts["ce"].double() * b,
                            loss.parts["kl"].double() * b, (loss.logits.argmax(1) == y).sum().double()])
        # On the device, so that a GPU is not made to wait every step; read with the bar's sums.
        bad = torch.where((bad < 0) & ~torch.isfinite(loss.detach()), step, bad)
        if (step + 1) % every == 0 or step + 1 == steps:
            _check_finite(run, epoch, int(bad), loss)
        if on_progress and run.lead and ((step + 1) % every == 0 or step + 1 == steps):
            seen = min((step + 1) * bs, n)
            s = tot.tolist()  # this process's sums: the bar shows process 0's share
            share = seen / world if world > 1 else seen
            on_progress(epoch=epoch, epochs=cfg.epochs, step=step + 1, steps=steps, loss=s[0] / share,
                        acc=s[3] / share)
    if run.sched is not None:
        run.sched.step()
    return ddp.all_sum(tot).tolist()


class NonFinite(SgtoolError):
    """The loss became NaN or infinite: the weights after that step are no good."""


def _check_finite(run: Run, epoch: int, bad: int, loss) -> None:
    if bad >= 0:
        kept = f"epoch {epoch - 1}'s checkpoint is kept" if epoch > 1 else "no epoch had finished"
        raise NonFinite(f"the training loss became {float(loss.detach()):g} at epoch {epoch}, batch {bad + 1}; "
                        f"the run is marked failed and {kept}; lower --lr (or --kl-weight), or look for "
                        f"non-finite values in the data")


def end_epoch(run: Run, epoch: int, sums: list[float], seconds: float) -> None:
    """Score the epoch (test, and validation where the epoch is chosen on it), log its row, keep
    its weights if it is the best so far, and checkpoint."""
    if not run.lead:
        return
    data, device, n = run.data["split"], run.device, len(run.data["x"])
    test_acc = split_scores(run.model, data.x_test, data.y_test, device=device)["acc"]
    row = {"epoch": epoch, "train_loss": round(sums[0] / n, 6), "train_ce": round(sums[1] / n, 6),
           "train_kl": round(sums[2] / n, 6), "train_acc": round(sums[3] / n, 6)}
    if run.cfg.select in VAL_SELECTS:
        val = split_scores(run.model, data.extras["x_val"], data.extras["y_val"], device=device)
        row.update(val_acc=round(val["acc"], 6), val_loss=round(val["loss"], 6))
    row.update(test_acc=round(test_acc, 6), seconds=round(seconds, 3))
    run.rows.append(row)
    write_csv(run.dir / METRICS, run.rows)
    if run.keeps_best and run.score(row) > run.best:  # strictly better, as the authors' is_best
        run.best = run.score(row)
        save_tensors(run.dir / BEST, run.model.state_dict(), metadata={"epoch": str(epoch)})
    save_checkpoint(run.dir, run.model, run.opt, run.sched, epoch, {"cpu": torch.get_rng_state()})
    write_json(run.dir / RUN, _meta("running", run.started, time.time() - run.t_start, id=run.id, epoch=epoch))


def finish(run: Run) -> float:
    """The kept weights as model.safetensors, the run marked completed; its test accuracy."""
    if not run.lead:
        return float("nan")
    if run.keeps_best and (run.dir / BEST).is_file():
        run.model.load_state_dict(load_tensors(run.dir / BEST))
        # the kept epoch: the first with the best criterion (as the strict > above)
        kept = max(run.rows, key=lambda r: (run.score(r), -int(r["epoch"])))
        test_acc = float(kept["test_acc"])
    else:
        test_acc = float(run.rows[-1]["test_acc"])
    save_tensors(run.dir / MODEL, run.model.state_dict())
    write_json(run.dir / RUN, _meta("completed", run.started, time.time() - run.t_start, id=run.id,
                                    epoch=run.cfg.epochs, test_acc=test_acc, world_size=run.world))
    return test_acc


def _completed(run_dir) -> dict | None:
    try:
        info = json.loads((run_dir / RUN).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("status") == "completed" else None


def start(cfg: TrainConfig, root, rid: str) -> Run:
    """Everything that can fail on bad input, before the run dir is touched: the device, the
    processes, the data, the loss and the model."""
    device = pick_device(cfg.device)
    rank, world = ddp.init(device.type)
    if world != (cfg.world_size or 1):
        raise SgtoolError(f"this config is for {cfg.world_size or 1} process(es), but {world} run; "
                          f"launch it with torchrun --nproc-per-node {cfg.world_size or 1}")
    device = ddp.local_device(device)
    if rank == 0:
        check_writable(root)
    data = load_data(cfg, cfg.train_size, cfg.test_size)
    check_data(cfg, data)
    warnings = class_warnings(data, get_dataset(cfg.dataset, cfg.data_dir).num_classes)
    loss_fn = make_loss(cfg, data)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data).to(device)
    if cfg.sync_bn:
        if device.type != "cuda":
            raise SgtoolError("--sync-bn synchronises BatchNorm over GPUs (NCCL); on CPUs each process keeps its own")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if device.type == "cuda" and get_dataset(cfg.dataset, cfg.data_dir).layout == "image":
        model = model.to(memory_format=torch.channels_last)  # cuDNN's convolutions prefer it
    spec = get_dataset(cfg.dataset, cfg.data_dir)
    if len(data.x_train):
        check_output(model, trim(data.x_train[:2], getattr(model, "pad_id", 0)).to(device), spec.num_classes, cfg.model)
    fwd = torch.compile(model) if cfg.compile else model
    xtr = data.x_train.to(device)  # the whole split lives on the device; only a batch's indices move
    tokens = not xtr.is_floating_point() and xtr.dim() == 2
    on_device = {"x": xtr, "y": data.y_train.to(device),
                 "valid": None if data.valid_train is None else data.valid_train.to(device),
                 "lengths": (xtr != getattr(model, "pad_id", 0)).sum(1) if tokens else None, "split": data}
    return Run(cfg, rid, root / rid, model, fwd, None, None, None, loss_fn, on_device, device, rank, world,
               warnings=warnings)


def train_run(cfg: TrainConfig, force: bool = False, on_progress=None) -> dict:
    """Train the run of `cfg` (or resume it), storing everything under runs/<hash12>/.

    Returns {"id", "dir", "status", "test_acc", "already", and "model" when it trained}.
    `on_progress(**info)` is called during the epoch with epoch, epochs, step, steps, loss and
    acc, so the CLI can draw a bar.

    Under torchrun (cfg.world_size > 1) every process takes its share of each global batch,
    the gradients are averaged across processes after each backward, and process 0 alone
    writes the store.
    """
    root = runs_root(cfg.runs_dir)
    rid = config_hash(cfg)
    if not force and (info := _completed(root / rid)) is not None:
        if (why := damage(root / rid)) is not None:
            raise SgtoolError(f"run {rid} is damaged ({why}); retrain it with --force")
        rows = read_metrics(root / rid)
        acc = float(info.get("test_acc", rows[-1]["test_acc"] if rows else "nan"))
        return {"id": rid, "dir": root / rid, "status": "completed", "test_acc": acc, "already": True}
    run = start(cfg, root, rid)
    if run.lead:
        make_root(root)
        run.dir.mkdir(exist_ok=True)
    ddp.barrier()
    with run_lock(run.dir) if run.lead else contextlib.nullcontext():
        run.started, run.t_start = datetime.now(timezone.utc).isoformat(), time.time()
        if run.lead:
            if force:
                for name in (CKPT, CKPT_META, METRICS, MODEL, BEST):
                    (run.dir / name).unlink(missing_ok=True)
            write_yaml(run.dir / CONFIG, to_dict(cfg))
            write_json(run.dir / RUN, _meta("running", run.started, 0.0, id=rid))
        ddp.barrier()
        run.opt, run.sched = make_optimizer(cfg, run.model)
        run.scaler = torch.amp.GradScaler(run.device.type) if cfg.precision == "fp16" else None
        first = resume(run)
        try:
            for epoch in range(first, cfg.epochs + 1):
                t0 = time.time()
                sums = run_epoch(run, epoch, on_progress)
                end_epoch(run, epoch, sums, time.time() - t0)
                ddp.barrier()
        except KeyboardInterrupt:
            if run.lead:
                write_json(run.dir / RUN, _meta("interrupted", run.started, time.time() - run.t_start, id=rid,
                                                epoch=len(run.rows)))
            raise
        except BaseException as e:
            if run.lead:
                write_json(run.dir / RUN, _meta("failed", run.started, time.time() - run.t_start, id=rid,
                                                error=f"{type(e).__name__}: {e}"))
            raise
        test_acc = finish(run)
        ddp.barrier()
    return {"id": rid, "dir": run.dir, "status": "completed", "test_acc": test_acc, "already": False,
            "model": run.model, "warnings": run.warnings}

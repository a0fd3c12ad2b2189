"""The one visible training loop. The trainers are loss objects (sgt.py) plugged into it:

    loss = loss_fn(model, x, y, valid)     # StandardLoss, SGTLoss or ASGTLoss
    loss.backward(); opt.step()

`train_run(cfg)` trains the run of a config (or resumes it) into the run store. The data is
held as tensors on the device (cifar10-airbench's way): an epoch is a seeded permutation of
indices. Loss and accuracy sums stay on the device; the host reads them once per epoch, and
every few steps for the progress bar on a GPU (every step on a CPU, where reading is free).
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import socket
import time
from datetime import datetime, timezone

import torch
import torch.nn.functional as F

from . import __version__
from .config import VAL_SELECTS, TrainConfig, config_hash, to_dict
from .data import get_dataset, load
from .errors import SgtoolError
from .models import build
from .sgt import ASGTLoss, SGTLoss, StandardLoss
from .store import (
    BEST,
    CKPT,
    CKPT_META,
    CONFIG,
    METRICS,
    MODEL,
    RUN,
    check_writable,
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


LOSSES = {"standard": StandardLoss, "sgt": SGTLoss, "asgt": ASGTLoss}


def model_options(cfg: TrainConfig, data=None) -> dict:
    """What the model's factory needs beyond (shape, classes): the dataset's extras that shape a
    model (a text vocabulary and its vectors) and the config's model settings."""
    opts = {k: v for k, v in (data.extras if data is not None else {}).items() if k in MODEL_EXTRAS}
    return {**opts, **{k: getattr(cfg, k) for k in MODEL_FIELDS if hasattr(cfg, k)}}


MODEL_EXTRAS = ("vocab_size", "vectors", "pad_id", "unk_id", "first_word_id")
MODEL_FIELDS = ("width", "heads", "pooling", "freeze_embeddings", "embed_dropout")


def build_model(cfg: TrainConfig, data=None, data_dir=None):
    return build(cfg.model, get_dataset(cfg.dataset, data_dir or cfg.data_dir), **model_options(cfg, data))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SgtoolError("--device cuda asked for, but no CUDA device is available; use --device cpu")
    return torch.device(name)


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


def train_step(model, opt, loss_fn, x, y, valid=None):
    """One optimiser step on batch (x, y): the whole of what a trainer changes is loss_fn."""
    loss = loss_fn(model, x, y, valid)
    opt.zero_grad(set_to_none=True)
    # Only the parameters: the SGT/ASGT graphs start at an input that required grad (for the
    # saliency), and naming the inputs keeps autograd from computing its gradient again.
    loss.backward(inputs=[p for g in opt.param_groups for p in g["params"] if p.requires_grad])
    opt.step()
    return loss


def trim(x: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """Token ids (B, L) cut after the batch's last real token: padding past it is never computed."""
    if x.is_floating_point() or x.dim() != 2 or not len(x):
        return x
    real = (x != pad_id).any(0).nonzero()
    return x[:, : int(real.max()) + 1] if len(real) else x[:, :1]


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


def length_batches(x: torch.Tensor, batch_size: int, pad_id: int = 0):
    """Index batches (as (B,) tensors) covering x. Token ids are batched by length (longest first),
    so that padding does not dominate; anything else in order."""
    if x.is_floating_point() or x.dim() != 2:
        return list(torch.arange(len(x)).split(batch_size))
    order = (x != pad_id).sum(1).argsort(descending=True, stable=True)
    return list(order.split(batch_size))


@torch.no_grad()
def accuracy(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000, device=None) -> float:
    """Top-1 accuracy of model (eval mode) on tensors x (N, ...), y (N,)."""
    return split_scores(model, x, y, batch_size, device)["acc"]


@torch.no_grad()
def split_scores(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000, device=None) -> dict:
    """Top-1 accuracy, mean cross-entropy (NLL) and which samples were right ("correct", (N,) bool
    on the CPU, in x's order: for paired comparisons of two models) of model in eval mode on
    x (N, ...), y (N,). Token ids go in batches of similar length, at most 64 documents (a long
    review's activations are large)."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    pad = getattr(model, "pad_id", 0)
    hits = torch.zeros(len(x), dtype=torch.bool, device=device)
    nll = torch.zeros((), dtype=torch.float64, device=device)
    tokens = not x.is_floating_point() and x.dim() == 2
    for idx in length_batches(x, 64 if tokens else batch_size, pad):
        logits, t = model(trim(x[idx], pad).to(device)), y[idx].to(device)  # (b, classes), (b,)
        hits[idx.to(device)] = logits.argmax(1) == t
        nll += F.cross_entropy(logits.float(), t, reduction="sum").double()
    model.train(was_training)
    n = max(len(x), 1)
    return {"acc": hits.sum().item() / n, "loss": nll.item() / n, "correct": hits.cpu()}


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


def load_data(cfg: TrainConfig, train_size=None, test_size=None, data_dir=None):
    """The dataset of a run config, with the config's data options (version, file hash, ...)."""
    return load(cfg.dataset, data_dir or cfg.data_dir, train_size, test_size, **data_options(cfg))


def data_options(cfg: TrainConfig) -> dict:
    """The config's data options; run_train_size lets a loader fit its scaling on the run's own
    training split when an evaluation loads only the test split."""
    opts = {k: getattr(cfg, k) for k in DATA_FIELDS if getattr(cfg, k, None) is not None}
    if cfg.data_version is None and get_dataset(cfg.dataset, cfg.data_dir).version is not None:
        opts["data_version"] = 1  # a run stored before its dataset had versions: the first one
    return {**opts, "run_train_size": cfg.train_size}


DATA_FIELDS = ("data_version", "data_sha256", "max_len", "embeddings", "embeddings_sha256", "test_split", "oov")


def check_data(cfg: TrainConfig, data) -> None:
    """What only the loaded data can tell: SGT must mask at least one feature of every sample
    (fixed-size images and series are checked with the config)."""
    from .layout import n_masked

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


# --------------------------------------------------------------------------- the loop


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """Mixed precision for the forward passes (the saliency ranking and the masking stay in
    float32: they work on x and on its gradient, which autocast leaves in float32)."""
    dtype = PRECISIONS[precision or "fp32"]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def train_run(cfg: TrainConfig, force: bool = False, on_progress=None) -> dict:
    """Train the run of `cfg` (or resume it), storing everything under runs/<hash12>/.

    Returns {"id", "dir", "status", "test_acc", "already", and "model" when it trained}.
    `on_progress(**info)` is called
    during the epoch with epoch, epochs, step, steps, loss and acc, so the CLI can draw a bar.

    Under torchrun (cfg.world_size > 1) every process takes its share of each global batch,
    the gradients are averaged across processes after each backward, and process 0 alone
    writes the store.
    """
    from . import distributed as ddp

    root = runs_root(cfg.runs_dir)
    rid = config_hash(cfg)
    run_dir = root / rid
    if not force and (run_dir / RUN).is_file():
        try:
            info = json.loads((run_dir / RUN).read_text())
        except (OSError, ValueError):
            info = {}
        if isinstance(info, dict) and info.get("status") == "completed":
            rows = read_metrics(run_dir)
            acc = float(info.get("test_acc", rows[-1]["test_acc"] if rows else "nan"))
            return {"id": rid, "dir": run_dir, "status": "completed", "test_acc": acc, "already": True}

    # Everything that can fail on bad input happens before the run dir is touched.
    device = pick_device(cfg.device)
    rank, world = ddp.init(device.type)
    if world != (cfg.world_size or 1):
        raise SgtoolError(f"this config is for {cfg.world_size or 1} process(es), but {world} run; "
                          f"launch it with torchrun --nproc-per-node {cfg.world_size or 1}")
    device = ddp.local_device(device)
    lead = rank == 0  # process 0 alone writes the store
    if lead:
        check_writable(root)
    data = load_data(cfg, cfg.train_size, cfg.test_size)
    check_data(cfg, data)
    loss_fn = make_loss(cfg, data)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data).to(device)
    if cfg.sync_bn:
        if device.type != "cuda":
            raise SgtoolError("--sync-bn synchronises BatchNorm over GPUs (NCCL); on CPUs each process keeps its own")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    image = get_dataset(cfg.dataset, cfg.data_dir).layout == "image"
    if device.type == "cuda" and image:  # cuDNN's convolutions prefer channels-last
        model = model.to(memory_format=torch.channels_last)
    fwd = torch.compile(model) if cfg.compile else model  # the module the losses call

    if lead:
        make_root(root)
        run_dir.mkdir(exist_ok=True)
    ddp.barrier()
    with run_lock(run_dir) if lead else contextlib.nullcontext():
        started = datetime.now(timezone.utc).isoformat()
        t_start = time.time()
        if lead:
            if force:
                for name in (CKPT, CKPT_META, METRICS, MODEL, BEST):
                    (run_dir / name).unlink(missing_ok=True)
            write_yaml(run_dir / CONFIG, to_dict(cfg))
            write_json(run_dir / RUN, _meta("running", started, 0.0, id=rid))
        ddp.barrier()

        opt, sched = make_optimizer(cfg, model)
        scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
        rows, start = [], 1
        ckpt = load_checkpoint(run_dir, model, opt, sched)  # every process reads the same checkpoint
        if ckpt is not None:
            last, rng = ckpt
            # Rows past the checkpoint belong to an epoch whose checkpoint was never written.
            rows = [r for r in read_metrics(run_dir) if int(r["epoch"]) <= last]
            start = last + 1
            if "cpu" in rng:
                torch.set_rng_state(rng["cpu"])

        # The whole split lives on the device; only the indices of a batch move.
        xtr, ytr = data.x_train.to(device), data.y_train.to(device)
        vtr = None if data.valid_train is None else data.valid_train.to(device)
        n, bs = len(xtr), cfg.batch_size
        pad = getattr(model, "pad_id", 0)
        augment = AUGMENTATIONS.get(cfg.augment or "none")
        # Which epoch's weights the run keeps: the authors' recipe keeps the best test epoch (as
        # their train_MNIST.py), --select val the best validation accuracy, --select val-loss the
        # lowest validation NLL, otherwise the last epoch. score(row): higher is better.
        select_val = cfg.select in VAL_SELECTS
        keep_best = cfg.recipe == "authors" or select_val
        crit = VAL_SELECTS.get(cfg.select, "test_acc")
        sign = -1.0 if crit == "val_loss" else 1.0

        def score(r: dict) -> float:
            return sign * float(r[crit])

        best = max((score(r) for r in rows), default=-math.inf)
        params = [p for g in opt.param_groups for p in g["params"] if p.requires_grad]
        tokens = not xtr.is_floating_point() and xtr.dim() == 2
        lengths = (xtr != pad).sum(1) if tokens else None
        steps = (n + bs - 1) // bs
        every = 1 if device.type == "cpu" else 25  # steps between host reads for the bar
        try:
            for epoch in range(start, cfg.epochs + 1):
                t0 = time.time()
                torch.manual_seed(epoch_seed(cfg.seed, epoch))
                perm = torch.randperm(n).to(device)  # the same on every process
                if lengths is not None:  # text: batches of similar length, so padding does not dominate
                    perm = bucketed(perm, lengths, bs)
                model.train()
                # loss, ce, kl, correct: summed over samples, in float64 as the host would
                tot = torch.zeros(4, dtype=torch.float64, device=device)
                for step in range(steps):
                    batch = perm[step * bs : (step + 1) * bs]
                    idx = batch.tensor_split(world)[rank] if world > 1 else batch  # this process's share
                    x, y = trim(xtr[idx], pad), ytr[idx]
                    if augment is not None:
                        x = augment(x)
                    if device.type == "cuda" and image:
                        x = x.contiguous(memory_format=torch.channels_last)
                    v = None if vtr is None else vtr[idx][:, : x.shape[1]]
                    with autocast(device, cfg.precision):
                        loss = loss_fn(fwd, x, y, v)
                    opt.zero_grad(set_to_none=True)
                    # Only the parameters: the SGT/ASGT graphs start at an input that required grad.
                    (scaler.scale(loss) if scaler else loss).backward(inputs=params)
                    ddp.average_gradients(params, len(idx) / max(len(batch), 1))
                    if scaler:
                        scaler.step(opt)
                        scaler.update()
                    else:
                        opt.step()
                    b = len(idx)
                    tot += torch.stack([loss.detach().double() * b, loss.parts["ce"].double() * b,
                                        loss.parts["kl"].double() * b,
                                        (loss.logits.argmax(1) == y).sum().double()])
                    if on_progress and lead and ((step + 1) % every == 0 or step + 1 == steps):
                        seen = min((step + 1) * bs, n)
                        s = tot.tolist()  # this process's sums: the bar shows process 0's share
                        share = seen / world if world > 1 else seen
                        on_progress(epoch=epoch, epochs=cfg.epochs, step=step + 1, steps=steps,
                                    loss=s[0] / share, acc=s[3] / share)
                if sched is not None:
                    sched.step()
                s = ddp.all_sum(tot).tolist()
                if lead:
                    test_acc = accuracy(model, data.x_test, data.y_test, device=device)
                    row = {"epoch": epoch, "train_loss": round(s[0] / n, 6), "train_ce": round(s[1] / n, 6),
                           "train_kl": round(s[2] / n, 6), "train_acc": round(s[3] / n, 6)}
                    if select_val:
                        val = split_scores(model, data.extras["x_val"], data.extras["y_val"], device=device)
                        row.update(val_acc=round(val["acc"], 6), val_loss=round(val["loss"], 6))
                    row.update(test_acc=round(test_acc, 6), seconds=round(time.time() - t0, 3))
                    rows.append(row)
                    write_csv(run_dir / METRICS, rows)
                    if keep_best and score(row) > best:  # strictly better, as the authors' is_best
                        best = score(row)
                        save_tensors(run_dir / BEST, model.state_dict(), metadata={"epoch": str(epoch)})
                    save_checkpoint(run_dir, model, opt, sched, epoch, {"cpu": torch.get_rng_state()})
                    write_json(run_dir / RUN, _meta("running", started, time.time() - t_start, id=rid, epoch=epoch))
                ddp.barrier()
        except KeyboardInterrupt:
            if lead:
                write_json(run_dir / RUN, _meta("interrupted", started, time.time() - t_start, id=rid,
                                                epoch=len(rows)))
            raise
        except BaseException as e:
            if lead:
                write_json(run_dir / RUN, _meta("failed", started, time.time() - t_start, id=rid,
                                                error=f"{type(e).__name__}: {e}"))
            raise
        test_acc = float("nan")
        if lead:
            if keep_best and (run_dir / BEST).is_file():
                model.load_state_dict(load_tensors(run_dir / BEST))
                # the kept epoch: the first with the best criterion (as the strict > above)
                kept = max(rows, key=lambda r: (score(r), -int(r["epoch"])))
                test_acc = float(kept["test_acc"])
            else:
                test_acc = float(rows[-1]["test_acc"])
            save_tensors(run_dir / MODEL, model.state_dict())
            write_json(run_dir / RUN, _meta("completed", started, time.time() - t_start, id=rid, epoch=cfg.epochs,
                                            test_acc=test_acc, world_size=world))
        ddp.barrier()
    return {"id": rid, "dir": run_dir, "status": "completed", "test_acc": test_acc, "already": False,
            "model": model}


def load_model(run: dict, device: str | torch.device = "cpu", data=None, data_dir=None):
    """A stored run's model (from store.read_run/find_run), in eval mode, on device. Token models
    need their dataset's vocabulary: pass the loaded `data`, or it is loaded here."""
    from .config import from_dict

    cfg = from_dict(run["config"])
    if data is None and get_dataset(cfg.dataset, data_dir or cfg.data_dir).layout == "tokens":
        data = load_data(cfg, 1, 1, data_dir)
    model = build_model(cfg, data, data_dir)
    path = run["dir"] / MODEL
    try:
        model.load_state_dict(load_tensors(path))
    except Exception as e:  # noqa: BLE001 - a truncated, foreign or mismatched file: one line
        raise SgtoolError(f"{path} is corrupt or does not fit the run's model ({type(e).__name__}); "
                          f"retrain it with `sgtool train ... --force` (the run's flags)") from None
    return model.to(device).eval(), cfg

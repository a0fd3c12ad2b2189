"""What a stored run is made of, loaded again: its config's data and model, on a device. Training
builds its model and data through the same functions, so a run's evaluation sees exactly what
its training saw.

    load_data(cfg)        the run's dataset, with the config's data options
    build_model(cfg)      a fresh model of the run's architecture (check_output: it maps to logits)
    load_model(run)       the trained model of a stored run, in eval mode
    select_runs(...)      runs by id prefixes, or the run of a training config
    pick_device(name)     auto | cpu | cuda
    trim, length_batches  token batches without padding past their longest document
    split_scores          accuracy, NLL and per-sample hits of a model on a split
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .config import TrainConfig, config_hash, from_dict, make_config
from .config.legacy import STORED_DEFAULTS
from .data import get_dataset, load
from .errors import SgtoolError, UsageError
from .models import build
from .store import MODEL, find_run, load_tensors

# The dataset's extras that shape a model (a text vocabulary and its vectors), and the config's
# model settings: what a model factory gets beyond (shape, classes).
MODEL_EXTRAS = ("vocab_size", "vectors", "pad_id", "unk_id", "first_word_id")
MODEL_FIELDS = ("width", "heads", "pooling", "freeze_embeddings", "embed_dropout")
DATA_FIELDS = ("data_version", "data_sha256", "max_len", "embeddings", "embeddings_sha256", "test_split", "oov",
               "subset")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SgtoolError("--device cuda asked for, but no CUDA device is available; use --device cpu")
    return torch.device(name)


def data_options(cfg: TrainConfig) -> dict:
    """The config's data options; run_train_size lets a loader fit its scaling on the run's own
    training split when an evaluation loads only the test split."""
    opts = {k: getattr(cfg, k) for k in DATA_FIELDS if getattr(cfg, k, None) is not None}
    if cfg.data_version is None and get_dataset(cfg.dataset, cfg.data_dir).version is not None:
        opts["data_version"] = STORED_DEFAULTS["data_version"]
    return {**opts, "run_train_size": cfg.train_size}


def load_data(cfg: TrainConfig, train_size=None, test_size=None, data_dir=None):
    """The dataset of a run config, with the config's data options (version, file hash, ...)."""
    return load(cfg.dataset, data_dir or cfg.data_dir, train_size, test_size, **data_options(cfg))


def model_options(cfg: TrainConfig, data=None) -> dict:
    opts = {k: v for k, v in (data.extras if data is not None else {}).items() if k in MODEL_EXTRAS}
    return {**opts, **{k: getattr(cfg, k) for k in MODEL_FIELDS if hasattr(cfg, k)}}


def build_model(cfg: TrainConfig, data=None, data_dir=None):
    return build(cfg.model, get_dataset(cfg.dataset, data_dir or cfg.data_dir), **model_options(cfg, data))


def check_output(model, x: torch.Tensor, num_classes: int, name: str) -> None:
    """The model maps a batch to (B, classes) finite logits, checked on two training samples before
    anything is written."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:  # noqa: BLE001 - anyone's model can fail in any way: one line
        raise SgtoolError(f"model {name} fails on a batch of the data ({type(e).__name__}: {e})") from None
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(x), num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SgtoolError(f"model {name} returns {shape} for a batch of {len(x)}, not (batch, {num_classes}) logits "
                          f"for the dataset's {num_classes} classes")


def load_model(run: dict, device: str | torch.device = "cpu", data=None, data_dir=None):
    """A stored run's model (from store.read_run/find_run), in eval mode, on device. Token models
    need their dataset's vocabulary: pass the loaded `data`, or it is loaded here."""
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


def trim(x: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """Token ids (B, L) cut after the batch's last real token: padding past it is never computed."""
    if x.is_floating_point() or x.dim() != 2 or not len(x):
        return x
    real = (x != pad_id).any(0).nonzero()
    return x[:, : int(real.max()) + 1] if len(real) else x[:, :1]


def length_batches(x: torch.Tensor, batch_size: int, pad_id: int = 0):
    """Index batches (as (B,) tensors) covering x. Token ids are batched by length (longest first),
    so that padding does not dominate; anything else in order."""
    if x.is_floating_point() or x.dim() != 2:
        return list(torch.arange(len(x)).split(batch_size))
    order = (x != pad_id).sum(1).argsort(descending=True, stable=True)
    return list(order.split(batch_size))


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


def accuracy(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000, device=None) -> float:
    """Top-1 accuracy of model (eval mode) on tensors x (N, ...), y (N,)."""
    return split_scores(model, x, y, batch_size, device)["acc"]


def select_runs(root: Path, ids: list[str] | None, train_flags: dict | None = None,
                config_yaml: str | None = None) -> list[dict]:
    """Runs named by id prefixes, or, when none are given, the run of the training config
    that the training flags describe (as the authors' scripts did); not both, since the flags
    would then be ignored."""
    flags = {k: v for k, v in (train_flags or {}).items() if v is not None}
    if ids:
        if flags or config_yaml:
            given = ", ".join(f"--{k.replace('_', '-')}" for k in flags) or "--config"
            raise UsageError(f"name the runs by id or by their training flags, not both ({given} given with "
                             f"{' '.join(ids)})")
        return [find_run(root, i) for i in ids]
    if not flags and not config_yaml:
        raise SgtoolError("name a run id, or give the training flags (e.g. --dataset mnist --mask-frac 0.5)")
    cfg = make_config(config_yaml, **flags)
    rid = config_hash(cfg)
    if not (root / rid).is_dir():
        raise SgtoolError(f"no run for that training config (id {rid}) in {root}; train it first")
    return [find_run(root, rid)]

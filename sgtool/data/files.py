"""Your own data from one file: `--dataset npz:PATH` (numpy .npz) or `--dataset pt:PATH` (a dict of
tensors saved by torch.save, read with weights_only=True: tensors and plain containers only, no
code runs).

Keys: x_train, y_train, x_test, y_test; optionally gt_train, gt_test (the ground-truth salient
features), lengths_train, lengths_test (one length per sample, for series and token sequences
of unequal length: the steps past it are padding), num_classes, classes (names), layout
("image" | "series" | "tokens").

Without a `layout` key the rank of x_train decides: 4 -> image (N, C, H, W); 3 -> series
(N, T, F); 2 -> tokens (N, L) when integer, else series (N, T) with one feature. Images get a
per-channel Normalize fitted on x_train; attacks clip to x_train's range. The file's sha256
goes into the run's hash (config.data_sha256), so a changed file is a new run, and a run whose
file has changed since refuses to load it.
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import SgtoolError, UsageError
from .download import file_hash
from .registry import PREFIXES, Data, DatasetSpec

REQUIRED = ("x_train", "y_train", "x_test", "y_test")
DEFAULTS = {
    "image": dict(model="small-cnn", epochs=5, batch_size=64, optimizer="adam", lr=1e-3),
    "series": dict(model="tcn", epochs=10, batch_size=64, optimizer="adam", lr=1e-3),
    "tokens": dict(model="bilstm", epochs=5, batch_size=32, optimizer="adam", lr=1e-3),
}


def _path(name: str) -> Path:
    return Path(name.split(":", 1)[1]).expanduser()


def _read(path: Path, kind: str) -> dict:
    """The file's arrays as a dict of tensors; one line on any failure."""
    try:
        if kind == "npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise SgtoolError(f"dataset file {path} holds Python objects, and sgtool never unpickles; save a dict of "
                          f"tensors (torch.save({{'x_train': ..., ...}})) or use numpy.savez") from None
    except Exception as e:  # noqa: BLE001 - any failure means the file is not what we read
        why = (str(e).strip().splitlines() or [""])[0]
        raise SgtoolError(f"dataset file {path} is unreadable ({type(e).__name__}: {why}); "
                          f"write it with numpy.savez or torch.save of a dict of tensors") from None
    if not isinstance(obj, dict):
        raise SgtoolError(f"dataset file {path} holds a {type(obj).__name__}, not a dict of arrays")
    return obj


def _tensor(v, key: str, where: str) -> torch.Tensor:
    """An array of the file as a real-valued or integer tensor; one line for anything else."""
    if not isinstance(v, torch.Tensor):
        try:
            a = np.asarray(v)
            if a.dtype.kind not in "biufc":
                raise TypeError(a.dtype)
            v = torch.as_tensor(a)
        except (TypeError, ValueError, RuntimeError):
            raise UsageError(f"{where}: '{key}' is not an array of numbers; store numbers under it") from None
    if v.is_complex():
        raise UsageError(f"{where}: '{key}' holds complex numbers; sgtool trains on real-valued data")
    return v


def _scalar(v):
    v = np.asarray(v.numpy() if isinstance(v, torch.Tensor) else v)
    return v.item() if v.size == 1 else v.tolist()


@functools.lru_cache(maxsize=8)
def _parse(path: Path, kind: str, mtime: float, size: int):
    """(spec fields, tensors) of one file version, checked; cached while the file is unchanged."""
    raw = _read(path, kind)
    where = f"dataset file {path}"
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise UsageError(f"{where}: no '{missing[0]}' array; it needs {', '.join(REQUIRED)}")
    t = {k: _tensor(v, k, where) for k, v in raw.items() if k not in ("layout", "classes", "num_classes")}
    xtr, ytr, xte, yte = (t[k] for k in REQUIRED)
    layout = str(_scalar(raw["layout"])) if "layout" in raw else None
    if layout is None:
        layout = {4: "image", 3: "series"}.get(xtr.dim())
        if xtr.dim() == 2:
            layout = "series" if xtr.is_floating_point() else "tokens"
    if layout not in ("image", "series", "tokens"):
        raise UsageError(f"{where}: cannot tell the layout of x_train {tuple(xtr.shape)}; add a 'layout' key "
                         f"(image, series or tokens)")
    if layout == "series" and xtr.dim() == 2:
        xtr, xte = xtr[..., None], xte[..., None]
    rank = {"image": 4, "series": 3, "tokens": 2}[layout]
    for k, x in (("x_train", xtr), ("x_test", xte)):
        if x.dim() != rank:
            raise UsageError(f"{where}: {k} has shape {tuple(x.shape)}, but {layout} data is {rank}-D")
    if xtr.shape[1:] != xte.shape[1:]:
        raise UsageError(f"{where}: x_train samples are {tuple(xtr.shape[1:])} but x_test's are {tuple(xte.shape[1:])}")
    for xk, yk, x, y in (("x_train", "y_train", xtr, ytr), ("x_test", "y_test", xte, yte)):
        if y.dim() != 1 or len(y) != len(x):
            raise UsageError(f"{where}: {yk} has shape {tuple(y.shape)}, but {xk} has {len(x)} samples")
        if y.is_floating_point() and not torch.equal(y, y.round()):
            raise UsageError(f"{where}: {yk} holds non-integer labels")
    if layout == "tokens":
        if xtr.is_floating_point() or xte.is_floating_point():
            raise UsageError(f"{where}: token data must be integer ids")
        xtr, xte = xtr.long(), xte.long()
    else:
        xtr, xte = xtr.float(), xte.float()
        for k, x in (("x_train", xtr), ("x_test", xte)):
            if not torch.isfinite(x).all():
                raise UsageError(f"{where}: {k} holds NaN or infinite values; clean them before training")
    ytr, yte = ytr.long(), yte.long()
    labels = torch.cat([ytr, yte])
    n_classes = int(_scalar(raw["num_classes"])) if "num_classes" in raw else int(labels.max()) + 1
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise UsageError(f"{where}: labels must lie in [0, {n_classes}); found {int(labels.min())} to {int(labels.max())}")
    classes = [str(c) for c in _scalar(raw["classes"])] if "classes" in raw else [str(i) for i in range(n_classes)]
    if len(classes) != n_classes:
        raise UsageError(f"{where}: {len(classes)} class names for {n_classes} classes")
    feat = {"image": (1, *xtr.shape[2:]), "series": tuple(xtr.shape[1:]), "tokens": tuple(xtr.shape[1:])}[layout]
    out = {"x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte}
    for split, x in (("train", xtr), ("test", xte)):
        gt = t.get(f"gt_{split}")
        if gt is not None:
            if layout == "image" and gt.dim() == 3:
                gt = gt[:, None]
            if tuple(gt.shape) != (len(x), *feat):
                raise UsageError(f"{where}: gt_{split} has shape {tuple(gt.shape)}; the features of x_{split} "
                                 f"are {(len(x), *feat)}")
            out[f"gt_{split}"] = gt.bool()
        lengths = t.get(f"lengths_{split}")
        if lengths is not None:
            if layout == "image":
                raise UsageError(f"{where}: lengths_{split} is for series and tokens, not images")
            steps = x.shape[1]
            if lengths.shape != (len(x),) or lengths.min() < 1 or lengths.max() > steps:
                raise UsageError(f"{where}: lengths_{split} must hold one length in [1, {steps}] per sample")
            out[f"valid_{split}"] = torch.arange(steps)[None, :] < lengths.long()[:, None]  # (N, T)
    if layout == "image":
        mean = tuple(float(v) for v in xtr.mean(dim=(0, 2, 3)))
        std = tuple(max(float(v), 1e-6) for v in xtr.std(dim=(0, 2, 3)))
        bounds = (float(xtr.min()), float(xtr.max()))
    else:
        mean, std, bounds = (), (), None
    fields = dict(shape=tuple(xtr.shape[1:]), num_classes=n_classes, mean=mean, std=std, layout=layout,
                  bounds=bounds, has_gt="gt_test" in out, classes=classes)
    return fields, out


def _current(name: str):
    path = _path(name).resolve()
    if not path.is_file():
        raise SgtoolError(f"dataset file {path} not found; give --dataset npz:PATH or pt:PATH of an existing file")
    st = path.stat()
    return _parse(path, name.split(":", 1)[0], st.st_mtime, st.st_size)


def file_spec(name: str, data_dir=None) -> DatasetSpec:
    fields, _ = _current(name)
    fields = {k: v for k, v in fields.items() if k != "classes"}
    attack = dict(eps=0.1, step_size=0.01, steps=20)
    if fields["bounds"] is not None:
        span = fields["bounds"][1] - fields["bounds"][0]
        attack = dict(eps=0.1 * span, step_size=0.01 * span, steps=20)
    return DatasetSpec(functools.partial(_load, name), defaults=DEFAULTS[fields["layout"]], attack=attack,
                       description=f"from {_path(name)}", **fields)


def file_sha256(name: str) -> str:
    return file_hash(_path(name).resolve(), "sha256")


def _load(name, data_dir, train_size, test_size, data_sha256=None) -> Data:
    if data_sha256 and file_sha256(name) != data_sha256:
        raise SgtoolError(f"dataset file {_path(name)} has changed since this run was trained (sha256 differs); "
                          f"restore it, or train a new run on the new file")
    fields, t = _current(name)
    ntr = len(t["x_train"]) if train_size is None else train_size
    nte = len(t["x_test"]) if test_size is None else test_size
    pick = lambda k, n: None if k not in t else t[k][:n]  # noqa: E731
    return Data(pick("x_train", ntr), pick("y_train", ntr), pick("x_test", nte), pick("y_test", nte),
                list(fields["classes"]), pick("gt_train", ntr), pick("gt_test", nte), pick("valid_train", ntr),
                pick("valid_test", nte))


PREFIXES["npz"] = file_spec
PREFIXES["pt"] = file_spec

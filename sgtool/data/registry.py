"""The dataset registry: DATASETS (name -> DatasetSpec), the prefixes for datasets named by a
file or an archive, and `load`, the one entry point the rest of sgtool reads data through. The
families (images.py, series.py, text.py, files.py) register themselves when imported."""


from __future__ import annotations

import difflib
import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import SgtoolError, UsageError, unknown_name
from ..layout import LAYOUTS


@dataclass
class Data:
    x_train: torch.Tensor  # image (N, C, H, W) in [0, 1]; series (N, T, F); tokens (N, L) int64
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    # Ground-truth salient features, where the dataset has them: image (N, 1, H, W), series
    # (N, T, F), tokens (N, L); bool.
    gt_train: torch.Tensor | None = None
    gt_test: torch.Tensor | None = None
    # Which steps (series, (N, T)) or tokens (text, (N, L): the document's, not padding or the
    # query) are real and may be ranked and masked; None: all of them.
    valid_train: torch.Tensor | None = None
    valid_test: torch.Tensor | None = None
    # Whatever else the family carries: "vocab" and "vectors" (text), "background" (a series
    # sampler (n, generator) -> (n, T, F)), "ids" (document ids), ...
    extras: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetSpec:
    loader: object  # fn(data_dir, train_size, test_size, **options) -> Data
    shape: tuple  # one sample: image (C, H, W), series (T, F), tokens (L,)
    num_classes: int
    mean: tuple[float, ...] = ()  # images: per-channel, the model's first layer
    std: tuple[float, ...] = ()
    # Training defaults for this dataset: filled into the config where the user set nothing.
    defaults: dict = field(default_factory=dict)
    # Attack defaults (eps, step size, steps) used by `sgtool attack`.
    attack: dict = field(default_factory=dict)
    # The asgt trainer's attack defaults, where they differ from `attack`: an attack runs on
    # every training batch, so it takes fewer, larger steps within the same eps.
    train_attack: dict = field(default_factory=dict)
    layout: str = "image"  # image | series | tokens
    bounds: tuple[float, float] | None = (0.0, 1.0)  # the input range attacks clip to; None: none
    version: int | None = None  # the data's version; configs store it, old runs keep theirs
    description: str = ""
    has_gt: bool = False
    background: bool = False  # series: Data.extras["background"] samples the background process
    value_range: float | None = None  # the data's range, where no bounds clip it (eps is checked against it)


DATASETS: dict[str, DatasetSpec] = {}
# A loader's run_train_size when none is given: the training split asked for is the run's own.
# An evaluation loads one training sample, and passes the run's --train-size so that what a
# loader fits on the training split (scaling, a vocabulary) is the run's.
UNSET = object()


def register_dataset(name: str, loader, *, shape, num_classes: int, layout: str = "image",
                     mean=(), std=(), defaults=None, attack=None, train_attack=None,
                     bounds=(0.0, 1.0), version=None, description: str = "", has_gt: bool = False,
                     background: bool = False, value_range: float | None = None) -> DatasetSpec:
    """Add (or replace) a dataset. loader(data_dir, train_size, test_size, **options) -> Data.
    Image datasets give per-channel mean and std (the model's Normalize); `defaults` are
    training config values (model, epochs, batch_size, optimizer, lr) for this dataset."""
    if layout not in LAYOUTS:
        raise unknown_name("layout", layout, LAYOUTS)
    if layout == "image" and not (len(mean) == len(std) == shape[0]):
        raise ValueError(f"dataset {name}: an image dataset needs mean and std per channel")
    attack = attack or dict(eps=0.1, step_size=0.01, steps=20)
    spec = DatasetSpec(loader, tuple(shape), num_classes, tuple(mean), tuple(std), dict(defaults or {}),
                       dict(attack), dict(train_attack or {}), layout, bounds, version, description, has_gt,
                       background, value_range)
    DATASETS[name] = spec
    return spec


def default_data_dir() -> Path:
    return Path(os.environ.get("SGTOOL_DATA_DIR", "./data"))


# prefix -> fn(name) -> DatasetSpec, for datasets named by a path or an archive name: "npz:PATH",
# "pt:PATH" (files.py), "uea:NAME" (series.py), "eraser:NAME" (text.py).
PREFIXES: dict[str, object] = {}


def get_dataset(name: str, data_dir=None) -> DatasetSpec:
    """The spec of a registered name, or of a prefixed one ("npz:PATH", "uea:NAME", ...), whose
    shape may come from files under data_dir."""
    prefix = name.split(":", 1)[0] if ":" in name else None
    if prefix in PREFIXES:
        return PREFIXES[prefix](name, data_dir)
    if name not in DATASETS:
        raise unknown_dataset(name)
    return DATASETS[name]


# A family of registered names, shown as one pattern where a message lists the datasets:
# pattern -> (the names it stands for, what its parts may be).
FAMILIES: dict[str, tuple[set, str]] = {}
PREFIX_FORMS = {"npz": "npz:PATH", "pt": "pt:PATH", "uea": "uea:NAME", "eraser": "eraser:NAME"}


def unknown_dataset(name: str) -> UsageError:
    """One line: the closest names, then every dataset with the families folded into their
    patterns and the prefixed forms."""
    in_family = {n for names, _ in FAMILIES.values() for n in names}
    shown = sorted(n for n in DATASETS if n not in in_family)
    shown += [f"{pattern} ({parts})" for pattern, (_, parts) in sorted(FAMILIES.items())]
    shown += [PREFIX_FORMS.get(p, f"{p}:...") for p in sorted(PREFIXES)]
    close = difflib.get_close_matches(name, list(DATASETS), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return UsageError(f"unknown dataset '{name}'; {hint}choose from: {', '.join(shown)}")


def takes_option(spec: DatasetSpec, name: str) -> bool:
    """Whether a dataset's loader reads the option `name`: load() hands it only those."""
    params = inspect.signature(spec.loader).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def load(name: str, data_dir: str | Path | None = None, train_size: int | None = None,
         test_size: int | None = None, **options) -> Data:
    """Load a dataset by name: the one entry point the rest of sgtool uses. options (version,
    max_len, embeddings, ...) reach the loaders that take them."""
    spec = get_dataset(name, data_dir)
    kw = {k: v for k, v in options.items() if (v is not None or k == "run_train_size") and takes_option(spec, k)}
    post = options.get("subset") == "stratified" and "subset" not in kw  # the loader cannot choose: cut after
    sizes = (None, None) if post else (train_size, test_size)
    data = spec.loader(Path(data_dir) if data_dir else default_data_dir(), *sizes, **kw)
    if not isinstance(data, Data):
        raise UsageError(f"dataset {name}: its loader returned {type(data).__name__}, not sgtool.Data")
    if post:
        data = take_subset(data, train_size, test_size)
    if len(data.x_train) == 0 or len(data.x_test) == 0:
        split = "training" if len(data.x_train) == 0 else "test"
        flag = "--train-size" if split == "training" else "--test-size"
        raise SgtoolError(f"dataset {name} has no {split} samples; check its file, or give {flag} of at least 1")
    return data


def stratified(y: torch.Tensor, n: int | None) -> torch.Tensor:
    """Indices of the first n samples taken from each class in turn, in file order within a class:
    the first of class 0, the first of class 1, ..., the second of class 0, ... (deterministic,
    no seed needed). y (N,) holds class indices."""
    if n is None or not len(y):
        return torch.arange(min(len(y), n if n is not None else len(y)))
    y = y.long() - int(y.min())
    onehot = torch.nn.functional.one_hot(y)  # (N, C)
    rank = (onehot.cumsum(0) - 1).gather(1, y[:, None])[:, 0]  # each sample's place within its class
    return torch.argsort(rank * onehot.shape[1] + y, stable=True)[:n]


def take_subset(data: Data, train_size: int | None, test_size: int | None) -> Data:
    """A loaded dataset cut to stratified subsets of its splits (for loaders that cannot choose
    their samples themselves: they then fit what they fit on the whole training split)."""
    tr, te = stratified(data.y_train, train_size), stratified(data.y_test, test_size)
    pick = lambda t, i: None if t is None else t[i]  # noqa: E731
    return Data(data.x_train[tr], data.y_train[tr], data.x_test[te], data.y_test[te], data.classes,
                pick(data.gt_train, tr), pick(data.gt_test, te), pick(data.valid_train, tr),
                pick(data.valid_test, te), data.extras)


def class_warnings(data: Data, num_classes: int, splits=("train", "test")) -> list[str]:
    """One line for each split that holds fewer classes than the dataset has (a small first-N
    subset of a file sorted by class, say): its scores then say little about the others."""
    out = []
    for split in splits:
        y = getattr(data, f"y_{split}")
        present = int(torch.unique(y).numel()) if len(y) else 0
        if present < num_classes:
            name = "training" if split == "train" else split
            out.append(f"the {name} split holds {present} of the dataset's {num_classes} classes; "
                       f"give a larger --{split}-size or --subset stratified")
    return out


def split_sizes(n_train: int, n_test: int, train_size: int | None, test_size: int | None) -> tuple[int, int]:
    """The first train_size / test_size samples of splits of n_train / n_test."""
    return (n_train if train_size is None else min(train_size, n_train),
            n_test if test_size is None else min(test_size, n_test))

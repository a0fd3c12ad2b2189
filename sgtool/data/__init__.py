"""DATASETS registry: name -> DatasetSpec, whose loader returns whole splits as tensors.

One file per family: images.py, series.py, text.py, and files.py for your own data
(`npz:PATH` or `pt:PATH`). Datasets are small enough to hold in memory, as in
cifar10-airbench, so a training epoch is a permutation of indices and no DataLoader is needed.

Real datasets are read from a data dir (`--data-dir`, env SGTOOL_DATA_DIR, default ./data).
A missing file is downloaded from the canonical mirrors and checked; when that fails (no
network, or SGTOOL_OFFLINE=1) the error names the file and `--data-dir`.

`register_dataset(name, loader, layout=..., shape=..., num_classes=...)` adds your own.
"""

from . import files, images, series, text, uea  # noqa: F401 - each family registers its datasets
from .registry import (
    DATASETS,
    PREFIXES,
    Data,
    DatasetSpec,
    default_data_dir,
    get_dataset,
    load,
    register_dataset,
    split_sizes,
    takes_option,
)

__all__ = ["Data", "DatasetSpec", "DATASETS", "PREFIXES", "register_dataset", "get_dataset", "load",
           "default_data_dir", "split_sizes", "takes_option"]

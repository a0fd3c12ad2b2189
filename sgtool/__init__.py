"""sgtool: saliency guided training (SGT, ASGT) for PyTorch, and the evaluations that measure it.

The public API is flat: everything a script needs is importable from `sgtool`. The modules that
pull in heavy libraries (captum through the saliency methods, pandas and matplotlib through the
report) are imported on first use, so `import sgtool` and the CLI start fast.
"""

import os as _os

# With more busy threads than cores (2-core machines, parallel jobs), libgomp's default active
# spin-waiting made PGD and ASGT steps about 3x slower here; passive waiting costs nothing when
# the machine is idle. It must be set before torch loads OpenMP; a user's own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def tune_malloc() -> bool:
    """Keep freed memory in the process instead of handing it back to the kernel (glibc only).

    A training step allocates and frees activations of tens to hundreds of MB. glibc serves
    blocks over 128 KB-32 MB with mmap and unmaps them on free, so every step page-faults all
    of its memory afresh: on mnist-cnn at batch 512 the kernel time equalled the compute, and
    raising the thresholds halved the step time (benchmarks/train_speed.py). The cost is that
    the process keeps its peak memory. Called on import; SGTOOL_MALLOC=default opts out.
    Returns whether the settings took."""
    import ctypes
    import sys

    if _os.environ.get("SGTOOL_MALLOC") == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, (1 << 31) - 1))
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False


tune_malloc()

__version__ = "0.1.0"

from .config import TrainConfig, config_hash, make_config  # noqa: E402
from .data import DATASETS, Data, load  # noqa: E402
from .errors import SgtoolError, UsageError  # noqa: E402
from .models import MODELS, build, freeze  # noqa: E402
from .saliency import (  # noqa: E402
    SALIENCY,
    apply_mask,
    get_saliency,
    input_gradient,
    mask_lowest,
    position_score,
    rank_mask,
)
from .store import find_run, list_runs, read_run, runs_root, select_runs  # noqa: E402
from .train import LOSSES, accuracy, load_model, train_run  # noqa: E402

# name -> module, imported when first asked for (PEP 562).
_LAZY = {
    "MaskEvalConfig": "config", "AttackConfig": "config",
    "ATTACKS": "attacks", "get_attack": "attacks", "run_attack": "attacks",
    "fgsm": "attacks", "pgd": "attacks", "mifgsm": "attacks",
    "mask_eval": "evaluate", "attack_eval": "evaluate",
    "saliency_precision_recall": "evaluate", "precision_at_gt": "evaluate",
    "collect": "report", "tables": "report", "write_report": "report", "explain": "report",
    "explain_run": "report", "ExplainConfig": "report",
    "run_sweep": "sweep", "plan": "sweep", "load_experiments": "sweep",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'sgtool' has no attribute '{name}'")


__all__ = [
    "__version__", "TrainConfig", "config_hash", "make_config", "DATASETS", "Data", "load",
    "SgtoolError", "UsageError", "MODELS", "build", "freeze", "SALIENCY", "apply_mask", "get_saliency",
    "input_gradient", "mask_lowest", "position_score", "rank_mask", "find_run", "list_runs", "read_run",
    "runs_root", "select_runs", "LOSSES", "accuracy", "load_model", "train_run", "tune_malloc", *_LAZY,
]

"""sgtool: saliency guided training (SGT, ASGT) for PyTorch, and the evaluations that measure it.

The public API is flat: everything a script needs is importable from `sgtool`.
"""

__version__ = "0.1.0"

from .config import TrainConfig, config_hash, make_config  # noqa: E402
from .data import DATASETS, Data, load  # noqa: E402
from .errors import SgtoolError, UsageError  # noqa: E402
from .models import MODELS, build  # noqa: E402
from .saliency import apply_mask, input_gradient, mask_lowest, position_score, rank_mask  # noqa: E402
from .store import find_run, list_runs, read_run, runs_root, select_runs  # noqa: E402
from .train import LOSSES, accuracy, load_model, train_run  # noqa: E402

__all__ = [
    "__version__", "TrainConfig", "config_hash", "make_config", "DATASETS", "Data", "load",
    "SgtoolError", "UsageError", "MODELS", "build", "apply_mask", "input_gradient", "mask_lowest",
    "position_score", "rank_mask", "find_run", "list_runs", "read_run", "runs_root", "select_runs",
    "LOSSES", "accuracy", "load_model", "train_run",
]

"""Configurations: every option of training and of each evaluation declared once, as a field of
a frozen dataclass (options.py says how; train.py and evals.py declare them), their resolution
and checks (resolution.py), the ids (hashing.py) and the rules that keep stored ids valid
(legacy.py).

The declarations import nothing heavy, so that the command line reads them without loading
torch; resolution.py needs the registries (datasets, models, saliency methods), and the names it
defines are imported from it on first use (PEP 562), as `sgtool` does for its own names.
"""

from .evals import (
    MASK_EVAL_FRACTIONS,
    MASK_EVAL_METHODS,
    MASK_ORDERS,
    MASK_OUTPUTS,
    MASK_TARGETS,
    MASK_TIES,
    TEXT_FRACTIONS,
    TEXT_METHODS,
    AttackConfig,
    ExplainConfig,
    MaskEvalConfig,
)
from .files import load_yaml, read_yaml
from .hashing import canonical_hash, config_hash, eval_hash, hashed_fields, result_fields
from .options import coerce, normalise_keys, opt
from .train import (
    ADV_ATTACKS,
    AUGMENTS,
    DEVICES,
    OPTIMIZERS,
    PRECISIONS,
    RECIPES,
    SALIENCY_PASSES,
    SELECTS,
    TRAINERS,
    VAL_SELECTS,
    TrainConfig,
    from_dict,
    to_dict,
)

_RESOLVE = ("make_config", "resolve", "validate", "mask_k", "eps_limit", "build", "mask_eval_config",
            "attack_config", "resolve_mask_eval", "resolve_attack", "resolve_explain", "validate_mask_eval",
            "validate_attack", "validate_explain", "RESOLVE")


def __getattr__(name):
    if name in _RESOLVE:
        from . import resolution as module

        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sgtool.config' has no attribute '{name}'")


__all__ = [
    "TrainConfig", "MaskEvalConfig", "AttackConfig", "ExplainConfig", *_RESOLVE, "config_hash", "eval_hash",
    "hashed_fields", "result_fields", "canonical_hash", "to_dict", "from_dict", "read_yaml", "load_yaml", "coerce",
    "normalise_keys", "opt", "TRAINERS", "AUGMENTS", "PRECISIONS", "RECIPES", "OPTIMIZERS", "VAL_SELECTS",
    "SELECTS", "SALIENCY_PASSES", "ADV_ATTACKS", "DEVICES", "MASK_EVAL_METHODS", "MASK_EVAL_FRACTIONS",
    "TEXT_METHODS", "TEXT_FRACTIONS", "MASK_ORDERS", "MASK_TARGETS", "MASK_OUTPUTS", "MASK_TIES",
]

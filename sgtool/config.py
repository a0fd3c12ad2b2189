"""Training configuration: a frozen dataclass, its validation, and its hash.

Precedence is defaults < YAML (`--config FILE`) < flags. `None` means "not set": `resolve`
fills it from the dataset's defaults (data.DATASETS[name].defaults), so the stored config is
always complete. The run id is the sha256 of the canonical JSON of the fields that change
results; device, data dir and runs dir are left out, and so are the SGT-only fields when the
trainer is `standard` and the ASGT-only fields when it is not `asgt`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from .errors import UsageError, unknown_name

TRAINERS = ("standard", "sgt", "asgt")
OPTIMIZERS = ("adadelta", "sgd", "adam")
MASK_FILLS = ("random", "mean", "zero")
SALIENCY_SIGNS = ("abs", "signed")
SALIENCY_PASSES = ("eval", "shared")
ADV_ATTACKS = ("pgd", "fgsm")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = "synthetic"
    model: str | None = None
    trainer: str = "sgt"
    # SGT (and ASGT) masking
    mask_frac: float = 0.5
    kl_weight: float = 1.0
    mask_fill: str = "random"
    saliency_sign: str = "abs"
    saliency_pass: str = "eval"
    # ASGT's training attack; None means the dataset's attack defaults
    adv_attack: str = "pgd"
    adv_eps: float | None = None
    adv_steps: int | None = None
    adv_step_size: float | None = None
    # optimisation
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    seed: int = 0
    train_size: int | None = None
    test_size: int | None = None
    # not part of the hash: they do not change results
    data_dir: str | None = None
    runs_dir: str | None = None
    device: str = "auto"


NOT_HASHED = {"data_dir", "runs_dir", "device"}
SGT_ONLY = {"mask_frac", "kl_weight", "mask_fill", "saliency_sign", "saliency_pass"}
ASGT_ONLY = {"adv_attack", "adv_eps", "adv_steps", "adv_step_size"}
FIELD_TYPES = {f.name: f.type for f in fields(TrainConfig)}


def _coerce(key: str, value, where: str):
    """Turn a YAML/flag value into the field's type, or fail with one line."""
    if value is None:
        return None
    t = FIELD_TYPES[key]
    try:
        if t.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if t.startswith("float"):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if isinstance(value, (dict, list)):
            raise ValueError
        return str(value)
    except (TypeError, ValueError):
        kind = "an integer" if t.startswith("int") else "a number" if t.startswith("float") else "a string"
        raise UsageError(f"{where}: '{key.replace('_', '-')}' must be {kind}, got {value!r}") from None


def normalise_keys(d: dict, where: str) -> dict:
    """Accept `mask-frac` or `mask_frac`; refuse keys that are not config fields."""
    out = {}
    for k, v in d.items():
        key = str(k).replace("-", "_")
        if key not in FIELD_TYPES:
            valid = ", ".join(sorted(f.replace("_", "-") for f in FIELD_TYPES))
            raise UsageError(f"{where}: unknown key '{k}'; valid keys: {valid}")
        out[key] = _coerce(key, v, where)
    return out


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file {path} not found")
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise UsageError(f"{path}: malformed YAML{at}; fix the file or drop --config") from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise UsageError(f"{path}: expected a mapping of config keys, got {type(d).__name__}")
    return normalise_keys(d, str(path))


def make_config(yaml_path: str | Path | None = None, **flags) -> TrainConfig:
    """defaults < YAML < flags (flags that are None were not given), then resolve + validate."""
    values = load_yaml(yaml_path) if yaml_path else {}
    values.update(normalise_keys({k: v for k, v in flags.items() if v is not None}, "flags"))
    return resolve(TrainConfig(**values))


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill unset fields from the dataset's defaults and check every value."""
    from .data import get_dataset

    spec = get_dataset(cfg.dataset)
    d = dataclasses.asdict(cfg)
    for k, v in spec.defaults.items():
        if d.get(k) is None:
            d[k] = v
    if cfg.trainer == "asgt":
        for k in ("eps", "steps", "step_size"):
            if d[f"adv_{k}"] is None:
                d[f"adv_{k}"] = spec.attack[k]
    cfg = TrainConfig(**d)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    from .data import get_dataset
    from .models import MODELS

    spec = get_dataset(cfg.dataset)
    for kind, value, valid in [
        ("model", cfg.model, MODELS), ("trainer", cfg.trainer, TRAINERS),
        ("optimizer", cfg.optimizer, OPTIMIZERS), ("mask fill", cfg.mask_fill, MASK_FILLS),
        ("saliency sign", cfg.saliency_sign, SALIENCY_SIGNS),
        ("saliency pass", cfg.saliency_pass, SALIENCY_PASSES), ("device", cfg.device, DEVICES),
        ("adversarial attack", cfg.adv_attack, ADV_ATTACKS),
    ]:
        if value not in valid:
            raise unknown_name(kind, value, valid)
    if not (0.0 <= cfg.mask_frac < 1.0) or math.isnan(cfg.mask_frac):
        raise UsageError(f"--mask-frac must be in [0, 1), got {cfg.mask_frac}")
    if cfg.trainer != "standard" and mask_k(cfg.mask_frac, spec.shape) == 0:
        raise UsageError(
            f"--mask-frac {cfg.mask_frac} masks 0 of {spec.shape[1] * spec.shape[2]} features; "
            f"use a larger fraction or --trainer standard"
        )
    for name in ("epochs", "batch_size"):
        if getattr(cfg, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    for name in ("train_size", "test_size"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    if not cfg.lr > 0:
        raise UsageError(f"--lr must be positive, got {cfg.lr}")
    if cfg.kl_weight < 0:
        raise UsageError(f"--kl-weight must be non-negative, got {cfg.kl_weight}")
    if cfg.trainer == "asgt":
        if not cfg.adv_eps >= 0:
            raise UsageError(f"--adv-eps must be non-negative, got {cfg.adv_eps}")
        if cfg.adv_steps < 1:
            raise UsageError(f"--adv-steps must be at least 1, got {cfg.adv_steps}")
        if not cfg.adv_step_size > 0:
            raise UsageError(f"--adv-step-size must be positive, got {cfg.adv_step_size}")


def mask_k(mask_frac: float, shape) -> int:
    """k = floor(mask_frac * H * W): the number of positions SGT masks per sample."""
    return int(math.floor(mask_frac * shape[1] * shape[2] + 1e-9))


def hashed_fields(cfg: TrainConfig) -> dict:
    d = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_HASHED}
    if cfg.trainer == "standard":
        d = {k: v for k, v in d.items() if k not in SGT_ONLY}
    if cfg.trainer != "asgt":
        d = {k: v for k, v in d.items() if k not in ASGT_ONLY}
    return d


def canonical_hash(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def config_hash(cfg: TrainConfig) -> str:
    """The run id: first 12 hex digits of sha256 over the result-changing fields."""
    return canonical_hash(hashed_fields(cfg))[:12]


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict) -> TrainConfig:
    return TrainConfig(**normalise_keys(d, "config"))


# === evaluation configs ===
# Each evaluation is cached under its run by the hash of its own config (eval_hash), just
# like training runs. Fields that do not change results (device) are left out of the hash.

# --- MaskEvalConfig (issue 3) ---

# --- AttackConfig (issue 4) ---


def eval_hash(cfg, run_id: str) -> str:
    """12 hex digits over the run id and the evaluation config's result-changing fields."""
    d = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_HASHED}
    return canonical_hash({"run": run_id, "kind": type(cfg).__name__, **d})[:12]

"""Training configuration: a frozen dataclass, its validation, and its hash.

Precedence is defaults < YAML (`--config FILE`) < flags. `None` means "not set": `resolve`
fills it from the dataset's defaults (data.DATASETS[name].defaults), so the stored config is
always complete. The run id is the sha256 of the canonical JSON of the fields that change
results; device, data dir and runs dir are left out, and so are the SGT-only fields when the
trainer is `standard` and the ASGT-only fields when it is not `asgt`.

Fields added after sgtool 0.1 (LEGACY_FIELDS lists the ones before) enter the hash only when
they differ from their default, so that every run id of 0.1 stays valid: a config that does not
use a new feature hashes exactly as before.
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
AUGMENTS = ("none", "crop-flip")
PRECISIONS = ("fp32", "bf16", "fp16")
# A recipe fills the training settings it names (flags still win) and may change the loop:
# "authors" is the SGT authors' MNIST training (train_MNIST.py): batch 512, Adadelta at lr 1.0
# without a schedule, 100 epochs, and the weights of the epoch with the best test accuracy kept.
RECIPES = {"authors": dict(batch_size=512, optimizer="adadelta", lr=1.0, epochs=100)}
OPTIMIZERS = ("adadelta", "sgd", "adam")
# The epoch a run keeps: last, or the best on the validation split by a metrics.csv column
# (val: the highest val_acc; val-loss: the lowest val_loss).
VAL_SELECTS = {"val": "val_acc", "val-loss": "val_loss"}
SELECTS = ("last", *VAL_SELECTS)
SALIENCY_PASSES = ("eval", "shared")
ADV_ATTACKS = ("pgd", "fgsm")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = "synthetic"
    model: str | None = None
    trainer: str = "sgt"
    # SGT (and ASGT) masking; None: the layout's default (images and series: random fill and
    # |gradient|; tokens: previous-salient fill and the summed gradient)
    mask_frac: float = 0.5
    kl_weight: float = 1.0
    mask_fill: str | None = None
    saliency_sign: str | None = None
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
    # --- added after 0.1: hashed only when not at their default ---
    data_sha256: str | None = None  # npz:/pt: datasets: the file's sha256, filled by resolve
    data_version: int | None = None  # the dataset's version, filled by resolve (synthetic: 2)
    width: int | None = None  # series and text models: hidden width (None: the model's default)
    heads: int | None = None  # transformer: attention heads (None: 5)
    # text
    max_len: int | None = None  # truncate documents to this many tokens (None: keep all)
    embeddings: str | None = None  # GloVe vectors file; not hashed itself: its sha256 is
    embeddings_sha256: str | None = None  # filled by resolve from the file
    freeze_embeddings: bool | None = None  # None: the dataset's default (ERASER with --embeddings: frozen)
    pooling: str | None = None  # bilstm: attention | max (None: attention)
    embed_dropout: float | None = None  # text models: dropout on the word vectors in training (None: 0)
    oov: str | None = None  # with --embeddings: the vectors of words the file lacks, random | unk (None: random)
    test_split: str = "test"  # ERASER: the split a text run is tested and evaluated on (test | val)
    # which epoch's weights the run keeps: "last", or "val" (the best validation accuracy, for
    # datasets with a val split; ERASER's default). None: the dataset's default (last).
    select: str | None = None
    # recipes
    recipe: str | None = None  # "authors": the SGT authors' MNIST recipe (see RECIPES)
    augment: str | None = None  # images: "crop-flip" (random crop, padding 4, and flip) | "none"
    # devices
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast for the forward passes)
    compile: bool = False  # torch.compile the model
    world_size: int | None = None  # processes of one run (torchrun); filled by resolve from WORLD_SIZE
    sync_bn: bool = False  # SyncBatchNorm across processes (CUDA)
    # not part of the hash: they do not change results
    data_dir: str | None = None
    runs_dir: str | None = None
    device: str = "auto"


NOT_HASHED = {"data_dir", "runs_dir", "device", "embeddings"}
FLAG_ONLY = {"data_dir", "runs_dir", "device"}  # from the command line (or env), never from experiments.yaml
LEGACY_FIELDS = ("dataset", "model", "trainer", "mask_frac", "kl_weight", "mask_fill", "saliency_sign",
                 "saliency_pass", "adv_attack", "adv_eps", "adv_steps", "adv_step_size", "epochs", "batch_size",
                 "lr", "optimizer", "seed", "train_size", "test_size")
# Values of an added field that mean "as sgtool 0.1 did": such a field stays out of the hash.
LEGACY_VALUES = {"data_version": (None, 1), "world_size": (None, 1), "select": (None, "last"),
                 "freeze_embeddings": (None, False), "oov": (None, "random"), "embed_dropout": (None, 0.0)}
SGT_ONLY = {"mask_frac", "kl_weight", "mask_fill", "saliency_sign", "saliency_pass"}
ASGT_ONLY = {"adv_attack", "adv_eps", "adv_steps", "adv_step_size"}
FIELD_TYPES = {f.name: f.type for f in fields(TrainConfig)}


def _coerce(key: str, value, where: str):
    """Turn a YAML/flag value into the field's type, or fail with one line."""
    if value is None:
        return None
    t = FIELD_TYPES[key]
    try:
        if t.startswith("bool"):
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
                return value.lower() in ("true", "yes")
            if not isinstance(value, bool):
                raise ValueError
            return value
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
        kind = ("an integer" if t.startswith("int") else "a number" if t.startswith("float")
                else "true or false" if t.startswith("bool") else "a string")
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


def read_yaml(path: str | Path, kind: str, hint: str = ""):
    """A YAML file's document, or one line saying it is missing or malformed (and where)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{kind} file {path} not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise UsageError(f"{path}: malformed YAML{at}{hint}") from None


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    d = read_yaml(path, "config", "; fix the file or drop --config")
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
    from .layout import LAYOUTS

    spec = get_dataset(cfg.dataset, cfg.data_dir)
    d = dataclasses.asdict(cfg)
    if d["world_size"] is None:
        from .distributed import env_world_size

        d["world_size"] = env_world_size()
    if cfg.recipe is not None:
        if cfg.recipe not in RECIPES:
            raise unknown_name("recipe", cfg.recipe, RECIPES)
        for k, v in RECIPES[cfg.recipe].items():
            if d.get(k) is None:
                d[k] = v
    if d["freeze_embeddings"] is None and not d["embeddings"]:
        d["freeze_embeddings"] = False  # random word vectors must be learnt
    if d["select"] is None and (d["test_split"] == "val" or d["recipe"] == "authors"):
        d["select"] = "last"  # the validation split is taken, or the recipe picks its own epoch
    for k, v in spec.defaults.items():
        if d.get(k) is None:
            d[k] = v
    lay = LAYOUTS[spec.layout]
    if d["mask_fill"] is None:
        d["mask_fill"] = lay.default_fill
    if d["saliency_sign"] is None:
        d["saliency_sign"] = lay.default_sign
    if d["data_version"] is None:
        d["data_version"] = spec.version
    if cfg.dataset.split(":", 1)[0] in ("npz", "pt") and d["data_sha256"] is None:
        from .data.files import file_sha256

        d["data_sha256"] = file_sha256(cfg.dataset)
    if d["embeddings"] and spec.layout == "tokens" and d["embeddings_sha256"] is None:
        from .data import default_data_dir
        from .data.text import embeddings_sha256

        d["embeddings_sha256"] = embeddings_sha256(d["embeddings"], cfg.data_dir or default_data_dir())
    if cfg.trainer == "asgt":
        for k in ("eps", "steps", "step_size"):
            if d[f"adv_{k}"] is None:
                d[f"adv_{k}"] = {**spec.attack, **spec.train_attack}[k]
    cfg = TrainConfig(**d)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    from .data import get_dataset, takes_option
    from .layout import LAYOUTS
    from .models import check_fits, get_model

    spec = get_dataset(cfg.dataset, cfg.data_dir)
    lay = LAYOUTS[spec.layout]
    get_model(cfg.model)  # an unknown name lists the models; a bad module:factory says why
    check_fits(cfg.model, spec, cfg.dataset)
    for kind, value, valid in [
        ("trainer", cfg.trainer, TRAINERS), ("optimizer", cfg.optimizer, OPTIMIZERS),
        (f"{spec.layout} mask fill", cfg.mask_fill, lay.fills),
        (f"{spec.layout} saliency sign", cfg.saliency_sign, lay.signs),
        ("saliency pass", cfg.saliency_pass, SALIENCY_PASSES), ("device", cfg.device, DEVICES),
        ("adversarial attack", cfg.adv_attack, ADV_ATTACKS),
    ]:
        if value not in valid:
            raise unknown_name(kind, value, valid)
    if not (0.0 <= cfg.mask_frac < 1.0) or math.isnan(cfg.mask_frac):
        raise UsageError(f"--mask-frac must be in [0, 1), got {cfg.mask_frac}")
    if cfg.trainer != "standard" and spec.layout != "tokens" and mask_k(cfg.mask_frac, spec.shape, spec.layout) == 0:
        raise UsageError(
            f"--mask-frac {cfg.mask_frac} masks 0 of {lay.n_features(spec.shape)} features; "
            f"use a larger fraction or --trainer standard"
        )
    if cfg.trainer == "asgt" and spec.layout == "tokens":
        raise UsageError("--trainer asgt is for images and series: an adversarial embedding is not a text "
                         "(see the README); use --trainer sgt or standard")
    for name in ("epochs", "batch_size"):
        if getattr(cfg, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    if (cfg.embeddings or cfg.max_len is not None or cfg.freeze_embeddings or cfg.pooling
            or cfg.embed_dropout) and spec.layout != "tokens":
        raise UsageError(f"--embeddings, --max-len, --freeze-embeddings, --pooling and --embed-dropout are for text; "
                         f"{cfg.dataset} is {spec.layout} data")
    if cfg.embed_dropout is not None and not 0.0 <= cfg.embed_dropout < 1.0:
        raise UsageError(f"--embed-dropout must be in [0, 1), got {cfg.embed_dropout}")
    if cfg.precision not in PRECISIONS:
        raise unknown_name("precision", cfg.precision, PRECISIONS)
    if cfg.augment is not None:
        if cfg.augment not in AUGMENTS:
            raise unknown_name("augmentation", cfg.augment, AUGMENTS)
        if cfg.augment != "none" and spec.layout != "image":
            raise UsageError(f"--augment {cfg.augment} is for images; {cfg.dataset} is {spec.layout} data")
    if cfg.embeddings and not takes_option(spec, "embeddings"):
        raise UsageError(f"{cfg.dataset} does not read word vectors (its words are its own); leave out --embeddings")
    if cfg.oov is not None:
        from .data.text import OOV_RULES

        if cfg.oov not in OOV_RULES:
            raise unknown_name("rule for words without a vector", cfg.oov, OOV_RULES)
        if not cfg.embeddings:
            raise UsageError("--oov says which vectors the words missing from --embeddings get; "
                             "give --embeddings PATH, or leave --oov out")
        if not takes_option(spec, "oov"):
            raise UsageError(f"{cfg.dataset}'s loader gives the words without a vector their own; leave out --oov")
    if cfg.pooling is not None and cfg.pooling not in ("attention", "max"):
        raise unknown_name("pooling", cfg.pooling, ("attention", "max"))
    if cfg.test_split not in ("test", "val"):
        raise unknown_name("test split", cfg.test_split, ("test", "val"))
    if cfg.select is not None and cfg.select not in SELECTS:
        raise unknown_name("epoch selection", cfg.select, SELECTS)
    if cfg.select in VAL_SELECTS and (cfg.recipe == "authors" or cfg.test_split == "val"):
        raise UsageError(f"--select {cfg.select} keeps an epoch chosen on the validation split; it cannot be combined "
                         "with " + ("--recipe authors (which keeps the best test epoch)" if cfg.recipe == "authors"
                                    else "--test-split val (the validation split would then be the test split)")
                         + "; use --select last")
    for name in ("train_size", "test_size", "width", "heads", "max_len"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    if not cfg.lr > 0:
        raise UsageError(f"--lr must be positive, got {cfg.lr}")
    if cfg.kl_weight < 0:
        raise UsageError(f"--kl-weight must be non-negative, got {cfg.kl_weight}")
    if cfg.trainer == "asgt":
        if not cfg.adv_eps >= 0:
            raise UsageError(f"--adv-eps must be non-negative, got {cfg.adv_eps}")
        if cfg.adv_eps > eps_limit(spec):
            raise UsageError(f"--adv-eps {cfg.adv_eps:g} is wider than {cfg.dataset}'s value range "
                             f"({eps_limit(spec):g}); give an eps in the data's units")
        if cfg.adv_steps < 1:
            raise UsageError(f"--adv-steps must be at least 1, got {cfg.adv_steps}")
        if not cfg.adv_step_size > 0:
            raise UsageError(f"--adv-step-size must be positive, got {cfg.adv_step_size}")


def mask_k(mask_frac: float, shape, layout: str = "image") -> int:
    """k = floor(mask_frac x features): the number of features SGT masks per sample of `shape`
    (image (C, H, W): H*W positions; series (T, F): T*F cells)."""
    from .layout import LAYOUTS, n_masked

    return n_masked(mask_frac, LAYOUTS[layout].n_features(shape))


def eps_limit(spec) -> float:
    """The largest sensible eps: the width of the data's value range (1 for images in [0, 1])."""
    if spec.bounds is not None:
        return spec.bounds[1] - spec.bounds[0]
    return spec.value_range if spec.value_range is not None else math.inf


_FIELD_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


def hashed_fields(cfg: TrainConfig) -> dict:
    d = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_HASHED}
    for k in list(d):
        if k not in LEGACY_FIELDS and d[k] in LEGACY_VALUES.get(k, (_FIELD_DEFAULTS[k],)):
            del d[k]
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

MASK_EVAL_METHODS = ("grad", "smoothgrad", "ig", "deeplift", "gradshap", "deepliftshap", "random")
MASK_EVAL_FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MASK_ORDERS = ("morf", "lerf")
MASK_TARGETS = ("label", "predicted")
MASK_OUTPUTS = ("logprob", "logit")
MASK_TIES = ("random", "index")
# Values of the fields added after sgtool 0.1 that reproduce 0.1's evaluation: at these values
# a field stays out of the evaluation's hash, so 0.1's cached results keep their ids.
MASK_EVAL_LEGACY = {"output": "logit", "ties": "index", "reduce": "abs", "random_seeds": 1,
                    "rationale_fraction": True}


@dataclass(frozen=True)
class MaskEvalConfig:
    """None means: the default for the run's kind of data, filled by `resolve_mask_eval` before
    hashing (images: the authors' seven methods, fractions 0 to 0.9, background fill)."""
    methods: tuple[str, ...] | None = None
    fractions: tuple[float, ...] | None = None
    order: str = "morf"  # most salient removed first; "lerf": least salient first
    fill: str | None = None  # images: background | mean | zero | random | blur; series: + the process's
    target: str | None = None  # label | predicted (text: predicted, ERASER's ŷ)
    baseline: str | None = None  # ig / deeplift / shap references: authors | zero | uniform | random | pad
    output: str = "logprob"  # the explained output: log p(target | x), or the target's logit
    ties: str = "random"  # equal scores ordered at random (seeded), or by flat index (0.1's rule)
    reduce: str = "abs"  # images: mean over channels of |attr| ("abs") or |mean attr| ("abs-mean");
    #                      text: |attr summed over the embedding| ("abs")
    random_seeds: int | None = None  # the random ranking averaged over this many seeds (text: 5)
    rationale_fraction: bool = True  # text: also score at the human rationales' share of tokens
    limit: int | None = None  # first N test samples
    batch_size: int = 250
    seed: int = 0
    data_dir: str | None = None  # not hashed
    device: str = "auto"  # not hashed


def _split(value, flag: str, cast) -> tuple:
    """A comma-separated string (as typed on the command line) or a sequence -> tuple of cast
    values, in order, without repeats."""
    items = [t.strip() for t in value.split(",")] if isinstance(value, str) else list(value)
    out = []
    for t in items:
        if t == "":
            continue
        try:
            v = cast(t)
        except (TypeError, ValueError):
            raise UsageError(f"{flag}: '{t}' is not a valid value; give a comma-separated list") from None
        if v not in out:
            out.append(v)
    if not out:
        raise UsageError(f"{flag} is empty; give a comma-separated list")
    return tuple(out)


def mask_eval_config(methods=None, fractions=None, **kw) -> MaskEvalConfig:
    """A validated MaskEvalConfig. methods and fractions may be comma-separated strings; fractions
    are sorted (the accuracy curve runs left to right) and repeats dropped. Options left None
    take their defaults."""
    values = {k: v for k, v in kw.items() if v is not None}
    if methods is not None:
        values["methods"] = _split(methods, "--method", str)
    if fractions is not None:
        values["fractions"] = tuple(sorted(_split(fractions, "--fractions", float)))
    cfg = MaskEvalConfig(**values)
    validate_mask_eval(cfg)
    return cfg


TEXT_METHODS = ("grad", "ig", "smoothgrad", "random")
TEXT_FRACTIONS = (0.01, 0.05, 0.1, 0.2, 0.5)  # ERASER's AOPC thresholds


def resolve_mask_eval(cfg: MaskEvalConfig, dataset: str, data_dir=None) -> MaskEvalConfig:
    """Fill the per-kind defaults for a run of `dataset`, then validate: the result is what gets
    hashed and run."""
    from .data import get_dataset
    from .layout import LAYOUTS

    spec = get_dataset(dataset, data_dir or cfg.data_dir)
    lay = LAYOUTS[spec.layout]
    d = {}
    if cfg.methods is None:
        d["methods"] = TEXT_METHODS if spec.layout == "tokens" else MASK_EVAL_METHODS
    if cfg.fractions is None:
        d["fractions"] = TEXT_FRACTIONS if spec.layout == "tokens" else MASK_EVAL_FRACTIONS
    if cfg.target is None:
        d["target"] = "predicted" if spec.layout == "tokens" else "label"
    if cfg.baseline is None:  # text: the zero vector, which is also the <pad> embedding
        d["baseline"] = "zero" if spec.layout == "tokens" else "authors"
    if cfg.random_seeds is None:
        d["random_seeds"] = 5 if spec.layout == "tokens" else 1
    if cfg.fill is None and spec.layout != "tokens":
        # images: the authors' top-left pixel; series: a fresh draw of the dataset's background
        # process (the benchmark's fill) where it has one, else uniform noise in the series' range
        d["fill"] = "background" if spec.layout == "image" or spec.background else "random"
    cfg = dataclasses.replace(cfg, **d)
    validate_mask_eval(cfg)
    if spec.layout != "tokens" and cfg.fill not in lay.fills:
        raise unknown_name(f"{spec.layout} fill", cfg.fill, lay.fills)
    if spec.layout == "image" and cfg.reduce not in ("abs", "abs-mean"):
        raise unknown_name("image channel reduction", cfg.reduce, ("abs", "abs-mean"))
    if spec.layout != "image" and cfg.reduce != "abs":
        raise UsageError(f"--reduce is for images; {dataset} is {spec.layout} data")
    for m in cfg.methods:  # methods that only make sense on one kind of data
        if m.startswith("tsr-") and spec.layout != "series":
            raise UsageError(f"--method {m}: temporal saliency rescaling is for series; {dataset} is {spec.layout} data")
        if m == "occlusion" and spec.layout != "image":
            raise UsageError(f"--method occlusion slides 4x4 windows over images; {dataset} is {spec.layout} data")
    return cfg


def validate_mask_eval(cfg: MaskEvalConfig) -> None:
    from .saliency import BASELINES, get_saliency

    if cfg.methods is not None:
        if not cfg.methods:
            raise UsageError("--method is empty; give a comma-separated list")
        for m in cfg.methods:
            get_saliency(m)
    for kind, value, valid in [
        ("order", cfg.order, MASK_ORDERS), ("target", cfg.target, MASK_TARGETS),
        ("baseline", cfg.baseline, BASELINES), ("output", cfg.output, MASK_OUTPUTS),
        ("ties", cfg.ties, MASK_TIES), ("device", cfg.device, DEVICES),
    ]:
        if value is not None and value not in valid:
            raise unknown_name(kind, value, valid)
    if cfg.fractions is not None:
        if not cfg.fractions:
            raise UsageError("--fractions is empty; give a comma-separated list such as 0,0.1,0.5")
        for f in cfg.fractions:
            if not (0.0 <= f < 1.0):  # also refuses nan
                raise UsageError(f"--fractions: {f} is outside [0, 1); give shares of the features to remove")
    if cfg.limit is not None and cfg.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {cfg.limit}")
    if cfg.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    if cfg.random_seeds is not None and cfg.random_seeds < 1:
        raise UsageError(f"--random-seeds must be at least 1, got {cfg.random_seeds}")

# --- AttackConfig (issue 4) ---


@dataclass(frozen=True)
class AttackConfig:
    methods: tuple[str, ...] = ("pgd",)
    eps: tuple[float, ...] | None = None  # None -> dataset default; resolved before hashing
    steps: int | None = None  # None -> dataset default
    step_size: float | None = None  # None -> dataset default
    restarts: int = 1
    decay: float = 1.0  # MI-FGSM momentum mu
    random_start: bool = True  # PGD
    train_mode: bool = False  # attack with the model in train mode (default eval)
    limit: int | None = None
    batch_size: int = 500
    seed: int = 0
    seeding: str = "batch"  # PGD's random starts: one stream per batch, or one for all ("stream", 0.1's)
    data_dir: str | None = None
    device: str = "auto"


def parse_eps(text: str) -> tuple[float, ...]:
    """'0.1,0.2,8/255' -> (0.1, 0.2, 0.0313...): a comma list of numbers or fractions."""
    out = []
    for item in (s.strip() for s in str(text).split(",")):
        try:
            num, _, den = item.partition("/")
            out.append(float(num) / float(den) if den else float(num))
        except (ValueError, ZeroDivisionError):
            raise UsageError(f"--eps: '{item}' is not a number; give a comma list such as 0.1,0.2,8/255") from None
    return tuple(out)


def parse_methods(text: str) -> tuple[str, ...]:
    """'fgsm, pgd' -> ('fgsm', 'pgd'); names are checked by validate_attack."""
    return tuple(s.strip() for s in str(text).split(","))


def attack_config(methods: str | None = None, eps: str | None = None, **flags) -> AttackConfig:
    """An AttackConfig from CLI values: comma lists for methods and eps, None = not given."""
    values = {k: v for k, v in flags.items() if v is not None}
    if methods is not None:
        values["methods"] = parse_methods(methods)
    if eps is not None:
        values["eps"] = parse_eps(eps)
    cfg = AttackConfig(**values)
    validate_attack(cfg)
    return cfg


def resolve_attack(cfg: AttackConfig, dataset: str, data_dir=None) -> AttackConfig:
    """Fill eps/steps/step_size from the dataset's attack defaults, sort and dedupe eps and
    dedupe methods, then validate: the result is what gets hashed."""
    from .data import get_dataset

    validate_attack(cfg)
    ds = get_dataset(dataset, data_dir or cfg.data_dir)
    spec = ds.attack
    cfg = dataclasses.replace(
        cfg,
        methods=tuple(dict.fromkeys(cfg.methods)),
        eps=tuple(sorted({float(e) for e in (cfg.eps if cfg.eps is not None else (spec["eps"],))})),
        steps=cfg.steps if cfg.steps is not None else spec["steps"],
        step_size=float(cfg.step_size if cfg.step_size is not None else spec["step_size"]),
    )
    validate_attack(cfg)
    limit = eps_limit(ds)
    for e in cfg.eps:
        if e > limit:
            unit = " (pixel space)" if ds.layout == "image" else ""
            raise UsageError(f"--eps must be in [0, {limit:g}]{unit} for {dataset}, got {e:g}")
    return cfg


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate_attack(cfg: AttackConfig) -> None:
    """One-line UsageError for every impossible value; None fields (still to resolve) pass."""
    from .attacks import ATTACKS

    if isinstance(cfg.methods, str) or not cfg.methods:
        raise UsageError("--method: give at least one attack, e.g. --method fgsm,pgd,mifgsm")
    for m in cfg.methods:
        if m not in ATTACKS:
            raise unknown_name("attack method", m, ATTACKS)
    if cfg.eps is not None:
        if isinstance(cfg.eps, str) or not cfg.eps:
            raise UsageError("--eps: give at least one value, e.g. --eps 0.1,0.2,0.3")
        for e in cfg.eps:
            if not _is_real(e):
                raise UsageError(f"--eps: {e!r} is not a finite number")
            if e < 0:
                raise UsageError(f"--eps must be non-negative, got {e}")
    if cfg.step_size is not None and not (_is_real(cfg.step_size) and cfg.step_size > 0):
        raise UsageError(f"--step-size must be a positive number, got {cfg.step_size!r}")
    if cfg.decay is None or not (_is_real(cfg.decay) and cfg.decay >= 0):
        raise UsageError(f"--decay must be a non-negative number, got {cfg.decay!r}")
    for name in ("steps", "restarts", "batch_size", "limit"):
        v = getattr(cfg, name)
        if v is None and name in ("steps", "limit"):
            continue
        if not (_is_int(v) and v >= 1):
            raise UsageError(f"--{name.replace('_', '-')} must be an integer of at least 1, got {v!r}")
    if not _is_int(cfg.seed):
        raise UsageError(f"--seed must be an integer, got {cfg.seed!r}")
    if cfg.seeding not in ("batch", "stream"):
        raise unknown_name("seeding", cfg.seeding, ("batch", "stream"))
    if cfg.device not in DEVICES:
        raise unknown_name("device", cfg.device, DEVICES)


EVAL_LEGACY = {"MaskEvalConfig": MASK_EVAL_LEGACY, "ExplainConfig": {"output": "logit", "baseline": "zero"},
               "AttackConfig": {"seeding": "stream"}}


def eval_hash(cfg, run_id: str) -> str:
    """12 hex digits over the run id and the evaluation config's result-changing fields. Fields
    added after 0.1 are left out at their legacy values (EVAL_LEGACY)."""
    legacy = EVAL_LEGACY.get(type(cfg).__name__, {})
    d = {k: v for k, v in dataclasses.asdict(cfg).items()
         if k not in NOT_HASHED and not (k in legacy and v == legacy[k])}
    return canonical_hash({"run": run_id, "kind": type(cfg).__name__, **d})[:12]

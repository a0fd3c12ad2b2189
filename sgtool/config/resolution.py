"""Configs made whole and checked: the training config's defaults filled from its dataset and
recipe (`resolve`), each evaluation config's from the run's kind of data (RESOLVE), and every
check that needs a registry or the dataset. Precedence is defaults < YAML (`--config FILE`) <
flags."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from ..attacks import ATTACKS
from ..data import default_data_dir, get_dataset, takes_option
from ..data.files import file_sha256
from ..data.glove import embeddings_sha256
from ..distributed import env_world_size
from ..errors import UsageError, unknown_name
from ..layout import LAYOUTS, n_masked
from ..models import check_fits, get_model
from ..models.registry import takes
from ..saliency import BASELINES, get_saliency
from . import options as o
from .evals import (
    MASK_EVAL_FRACTIONS,
    MASK_EVAL_METHODS,
    TEXT_FRACTIONS,
    TEXT_METHODS,
    AttackConfig,
    ExplainConfig,
    MaskEvalConfig,
)
from .files import load_yaml
from .train import RECIPES, VAL_SELECTS, TrainConfig


def make_config(yaml_path: str | Path | None = None, **flags) -> TrainConfig:
    """defaults < YAML < flags (flags that are None were not given), then resolve + validate."""
    values = load_yaml(yaml_path, TrainConfig) if yaml_path else {}
    values.update(o.normalise_keys(TrainConfig, {k: v for k, v in flags.items() if v is not None}, "flags"))
    return resolve(TrainConfig(**values))


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill unset fields from the dataset's defaults and check every value. Options the trainer
    does not use are set back to their defaults, so that a stored config says only what its run
    did; options the dataset's loader or the model's factory would ignore are refused."""
    o.check(cfg)  # a bad value of one field is named before the dataset is looked at
    spec = get_dataset(cfg.dataset, cfg.data_dir)
    refuse_unused(cfg, spec)
    d = dataclasses.asdict(cfg)
    for f in dataclasses.fields(cfg):
        if o.meta(f, "only") is not None and cfg.trainer not in o.meta(f, "only"):
            d[f.name] = f.default
    if cfg.dataset.split(":", 1)[0] in ("npz", "pt"):
        d["dataset"] = absolute_file(cfg.dataset)
    if d["world_size"] is None:
        d["world_size"] = env_world_size()
    if cfg.recipe is not None:
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
    if d["train_size"] is None and d["test_size"] is None:
        if cfg.subset is not None:
            raise UsageError("--subset chooses the samples that --train-size and --test-size take; give one of "
                             "them, or leave --subset out")
        d["subset"] = None  # the whole splits, in the files' order: no subset to choose
    elif d["subset"] is None:
        d["subset"] = "first"
    lay = LAYOUTS[spec.layout]
    if d["mask_fill"] is None and cfg.trainer != "standard":
        d["mask_fill"] = lay.default_fill
    if d["saliency_sign"] is None and cfg.trainer != "standard":
        d["saliency_sign"] = lay.default_sign
    if d["data_version"] is None:
        d["data_version"] = spec.version
    if cfg.dataset.split(":", 1)[0] in ("npz", "pt") and d["data_sha256"] is None:
        d["data_sha256"] = file_sha256(cfg.dataset)
    if d["embeddings"] and spec.layout == "tokens" and d["embeddings_sha256"] is None:
        d["embeddings_sha256"] = embeddings_sha256(d["embeddings"], cfg.data_dir or default_data_dir())
    if cfg.trainer == "asgt":
        for k in ("eps", "steps", "step_size"):
            if d[f"adv_{k}"] is None:
                d[f"adv_{k}"] = {**spec.attack, **spec.train_attack}[k]
    cfg = TrainConfig(**d)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Each field's own check (options.check), then what depends on the dataset or on other fields."""
    o.check(cfg)
    spec = get_dataset(cfg.dataset, cfg.data_dir)
    lay = LAYOUTS[spec.layout]
    get_model(cfg.model)  # an unknown name lists the models; a bad module:factory says why
    check_fits(cfg.model, spec, cfg.dataset)
    if cfg.trainer != "standard" and cfg.mask_fill not in lay.fills:
        raise unknown_name(f"{spec.layout} mask fill", cfg.mask_fill, lay.fills)
    if cfg.trainer != "standard" and cfg.saliency_sign not in lay.signs:
        raise unknown_name(f"{spec.layout} saliency sign", cfg.saliency_sign, lay.signs)
    if cfg.trainer != "standard" and spec.layout != "tokens" and mask_k(cfg.mask_frac, spec.shape, spec.layout) == 0:
        raise UsageError(
            f"--mask-frac {cfg.mask_frac} masks 0 of {lay.n_features(spec.shape)} features; "
            f"use a larger fraction or --trainer standard"
        )
    if cfg.trainer == "asgt" and spec.layout == "tokens":
        raise UsageError("--trainer asgt is for images and series: an adversarial embedding is not a text "
                         "(see the docs); use --trainer sgt or standard")
    for name in ("epochs", "batch_size", "lr", "optimizer"):
        if getattr(cfg, name) is None:
            raise UsageError(f"{cfg.dataset} has no default --{name.replace('_', '-')}; give one")
    if (cfg.embeddings or cfg.max_len is not None or cfg.freeze_embeddings or cfg.pooling
            or cfg.embed_dropout) and spec.layout != "tokens":
        raise UsageError(f"--embeddings, --max-len, --freeze-embeddings, --pooling and --embed-dropout are for text; "
                         f"{cfg.dataset} is {spec.layout} data")
    if cfg.augment not in (None, "none") and spec.layout != "image":
        raise UsageError(f"--augment {cfg.augment} is for images; {cfg.dataset} is {spec.layout} data")
    if cfg.embeddings and not takes_option(spec, "embeddings"):
        raise UsageError(f"{cfg.dataset} does not read word vectors (its words are its own); leave out --embeddings")
    if cfg.oov is not None:
        if not cfg.embeddings:
            raise UsageError("--oov says which vectors the words missing from --embeddings get; "
                             "give --embeddings PATH, or leave --oov out")
        if not takes_option(spec, "oov"):
            raise UsageError(f"{cfg.dataset}'s loader gives the words without a vector their own; leave out --oov")
    if cfg.select in VAL_SELECTS and (cfg.recipe == "authors" or cfg.test_split == "val"):
        raise UsageError(f"--select {cfg.select} keeps an epoch chosen on the validation split; it cannot be combined "
                         "with " + ("--recipe authors (which keeps the best test epoch)" if cfg.recipe == "authors"
                                    else "--test-split val (the validation split would then be the test split)")
                         + "; use --select last")
    if cfg.trainer == "asgt":
        for name in ("adv_eps", "adv_steps", "adv_step_size"):
            if getattr(cfg, name) is None:
                raise UsageError(f"{cfg.dataset} has no default --{name.replace('_', '-')}; give one")
        if cfg.adv_eps > eps_limit(spec):
            raise UsageError(f"--adv-eps {cfg.adv_eps:g} is wider than {cfg.dataset}'s value range "
                             f"({eps_limit(spec):g}); give an eps in the data's units")


# The options a dataset's loader reads, and those a model's factory takes: given for a dataset or a
# model that would ignore them, they are refused rather than stored as if they had done something.
LOADER_OPTIONS = ("max_len", "data_version", "test_split")
FACTORY_OPTIONS = ("width", "heads", "pooling")


def refuse_unused(cfg: TrainConfig, spec) -> None:
    """One line for an option given (not left to its default) that the dataset's loader or the
    model's factory would ignore."""
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    given = [k for k in (*LOADER_OPTIONS, *FACTORY_OPTIONS) if getattr(cfg, k) != defaults[k]]
    for k in given:
        flag = f"--{k.replace('_', '-')}"
        if k in LOADER_OPTIONS and not takes_option(spec, k):
            raise UsageError(f"{cfg.dataset} does not take {flag} (its loader would ignore it); leave it out")
        model = cfg.model or spec.defaults.get("model")
        if k in FACTORY_OPTIONS and model is not None and not takes(get_model(model)[0], k):
            raise UsageError(f"model {model} does not take {flag} (its factory would ignore it); leave it out")


def absolute_file(dataset: str) -> str:
    """npz:PATH / pt:PATH with PATH absolute, so that the run finds its file from any directory."""
    prefix, _, path = dataset.partition(":")
    return f"{prefix}:{Path(path).expanduser().resolve()}"


def mask_k(mask_frac: float, shape, layout: str = "image") -> int:
    """k = floor(mask_frac x features): the number of features SGT masks per sample of `shape`
    (image (C, H, W): H*W positions; series (T, F): T*F cells)."""
    return n_masked(mask_frac, LAYOUTS[layout].n_features(shape))


def eps_limit(spec) -> float:
    """The largest sensible eps: the width of the data's value range (1 for images in [0, 1])."""
    if spec.bounds is not None:
        return spec.bounds[1] - spec.bounds[0]
    return spec.value_range if spec.value_range is not None else math.inf


# --------------------------------------------------------------------------- building and checking


def build(cls, where: str = "flags", **values):
    """A validated `cls` config from values as typed (comma lists, numbers as strings or '8/255');
    values that are None take their defaults."""
    kw = {k: o.coerce(cls, k, v, _flag(cls, k) if where == "flags" else where)
          for k, v in values.items() if v is not None}
    if cls is MaskEvalConfig and "fractions" in kw:
        kw["fractions"] = tuple(sorted(kw["fractions"]))  # the accuracy curve runs left to right
    cfg = cls(**kw)
    VALIDATE[cls](cfg)
    return cfg


def _flag(cls, key: str) -> str:
    return o.flag_of({f.name: f for f in dataclasses.fields(cls)}[key])


def mask_eval_config(methods=None, fractions=None, **kw) -> MaskEvalConfig:
    """A validated MaskEvalConfig. methods and fractions may be comma-separated strings; fractions
    are sorted and repeats dropped. Options left None take their defaults."""
    return build(MaskEvalConfig, methods=methods, fractions=fractions, **kw)


def attack_config(methods=None, eps=None, **kw) -> AttackConfig:
    """A validated AttackConfig from CLI values: comma lists for methods and eps (8/255 allowed)."""
    return build(AttackConfig, methods=methods, eps=eps, **kw)


def validate_mask_eval(cfg: MaskEvalConfig) -> None:
    if cfg.methods is not None:
        for m in cfg.methods:
            get_saliency(m)
    o.check(cfg)
    if cfg.baseline is not None and cfg.baseline not in BASELINES:
        raise unknown_name("baseline", cfg.baseline, BASELINES)
    for f in cfg.fractions or ():
        if not 0.0 <= f < 1.0:  # also refuses nan
            raise UsageError(f"--fractions: {f} is outside [0, 1); give shares of the features to remove")


def validate_attack(cfg: AttackConfig) -> None:
    """One-line UsageError for every impossible value; None fields (still to resolve) pass."""
    for m in cfg.methods:
        if m not in ATTACKS:
            raise unknown_name("attack method", m, ATTACKS)
    for e in cfg.eps or ():
        if not math.isfinite(e):
            raise UsageError(f"--eps: {e!r} is not a finite number")
    o.check(cfg)


def validate_explain(cfg: ExplainConfig) -> None:
    for m in cfg.methods:
        get_saliency(m)
    o.check(cfg)
    if cfg.baseline not in BASELINES:
        raise unknown_name("baseline", cfg.baseline, BASELINES)


VALIDATE = {MaskEvalConfig: validate_mask_eval, AttackConfig: validate_attack, ExplainConfig: validate_explain}


def resolve_mask_eval(cfg: MaskEvalConfig, dataset: str, data_dir=None) -> MaskEvalConfig:
    """Fill the per-kind defaults for a run of `dataset`, then validate: the result is what gets
    hashed and run."""
    spec = get_dataset(dataset, data_dir or cfg.data_dir)
    lay = LAYOUTS[spec.layout]
    text = spec.layout == "tokens"
    d = {}
    if cfg.methods is None:
        d["methods"] = TEXT_METHODS if text else MASK_EVAL_METHODS
    if cfg.fractions is None:
        d["fractions"] = TEXT_FRACTIONS if text else MASK_EVAL_FRACTIONS
    if cfg.target is None:
        d["target"] = "predicted" if text else "label"
    if cfg.baseline is None:  # text: the zero vector, which is also the <pad> embedding
        d["baseline"] = "zero" if text else "authors"
    if cfg.random_seeds is None:
        d["random_seeds"] = 5 if text else 1
    if cfg.fill is None and not text:
        # images: the authors' top-left pixel; series: a fresh draw of the dataset's background
        # process (the benchmark's fill) where it has one, else uniform noise in the series' range
        d["fill"] = "background" if spec.layout == "image" or spec.background else "random"
    cfg = dataclasses.replace(cfg, **d)
    validate_mask_eval(cfg)
    if not text and cfg.fill not in lay.fills:
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


def resolve_attack(cfg: AttackConfig, dataset: str, data_dir=None) -> AttackConfig:
    """Fill eps/steps/step_size from the dataset's attack defaults, sort and dedupe eps and
    dedupe methods, then validate: the result is what gets hashed."""
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


def resolve_explain(cfg: ExplainConfig, dataset: str, data_dir=None) -> ExplainConfig:
    validate_explain(cfg)
    return cfg


RESOLVE = {MaskEvalConfig: resolve_mask_eval, AttackConfig: resolve_attack, ExplainConfig: resolve_explain}

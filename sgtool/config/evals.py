"""The evaluation configurations, each option declared once (options.opt). resolution.py fills
their defaults for a run's kind of data and checks them; each evaluation is cached under its
run by the hash of its resolved config (hashing.eval_hash). Nothing heavy is imported here."""

from __future__ import annotations

from dataclasses import dataclass

from . import options as o
from .options import opt
from .train import DEVICES

MASK_EVAL_METHODS = ("grad", "smoothgrad", "ig", "deeplift", "gradshap", "deepliftshap", "random")
MASK_EVAL_FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
TEXT_METHODS = ("grad", "ig", "smoothgrad", "random")
TEXT_FRACTIONS = (0.01, 0.05, 0.1, 0.2, 0.5)  # ERASER's AOPC thresholds
MASK_ORDERS = ("morf", "lerf")
MASK_TARGETS = ("label", "predicted")
MASK_OUTPUTS = ("logprob", "logit")
MASK_TIES = ("random", "index")
SEEDINGS = ("batch", "stream")

_DATA_DIR = dict(envvar="SGTOOL_DATA_DIR", default_text="./data", hashed=False, file=False)
_DEVICE = dict(choices=DEVICES, kind="device", hashed=False, file=False)
_METHODS = ("comma-separated: grad, smoothgrad, ig, deeplift, deeplift-authors, gradshap, deepliftshap, inputxgrad, "
            "guided-backprop, occlusion, random; tsr-METHOD for series")


@dataclass(frozen=True)
class MaskEvalConfig:
    """None means: the default for the run's kind of data, filled by `resolve_mask_eval` before
    hashing (images: the authors' seven methods, fractions 0 to 0.9, background fill)."""
    methods: tuple[str, ...] | None = opt(None, _METHODS, flag="--method",
                                          default_text="images and series: " + ",".join(MASK_EVAL_METHODS)
                                          + "; text: " + ",".join(TEXT_METHODS))
    fractions: tuple[float, ...] | None = opt(None, "comma-separated shares of the features removed, in [0, 1)",
                                              default_text="0,0.1,...,0.9; text: 0.01,0.05,0.1,0.2,0.5")
    order: str = opt("morf", "morf: most salient first | lerf: least salient first", choices=MASK_ORDERS, kind="order")
    fill: str | None = opt(None, "images: background | mean | zero | random | blur; series: background | random | "
                           "mean | zero", default_text="images: background; series: background where the data has "
                           "a process, else random")
    target: str | None = opt(None, "the class explained: label | predicted", choices=MASK_TARGETS, kind="target",
                             default_text="label; text: predicted")
    baseline: str | None = opt(None, "reference of ig, deeplift and the shap methods: authors (uniform noise in the "
                               "model's normalised units, as the SGT authors) | zero | uniform | random (ig from "
                               "uniform noise, deeplift from zero)",
                               default_text="authors; text: zero, the <pad> embedding")
    output: str = opt("logprob", "the output explained: logprob (log p, as the SGT authors' network gave it) | logit",
                      choices=MASK_OUTPUTS, kind="output")
    ties: str = opt("random", "equal scores in random (seeded) order | index order", choices=MASK_TIES,
                    kind="ties")
    reduce: str = opt("abs", "images: a position's score, abs (mean over channels of |attribution|) | abs-mean "
                      "(|mean over channels|, the authors')")
    random_seeds: int | None = opt(None, "the random ranking is averaged over this many seeds", check=o.at_least(1),
                                   default_text="1; text: 5")
    rationale_fraction: bool = opt(True, "text: also score at the human rationales' share of tokens", cli=False)
    limit: int | None = opt(None, "evaluate the first N test samples", check=o.at_least(1), default_text="all")
    batch_size: int = opt(250, "evaluation batch size", check=o.at_least(1))
    seed: int = opt(0, "seed of the fill, the random baseline and the methods' noise", check=o.seed)
    data_dir: str | None = opt(None, "where datasets live", **_DATA_DIR)
    device: str = opt("auto", "auto | cpu | cuda", **_DEVICE)


@dataclass(frozen=True)
class AttackConfig:
    methods: tuple[str, ...] = opt(("pgd",), "comma-separated: fgsm, pgd, mifgsm", flag="--method")
    eps: tuple[float, ...] | None = opt(None, "comma-separated L-inf radii in pixels [0, 1], e.g. 0.1,0.2 or 8/255",
                                        check=o.non_negative, default_text="per dataset: mnist 0.3, cifar10 8/255")
    steps: int | None = opt(None, "pgd / mifgsm steps", check=o.at_least(1),
                            default_text="per dataset: mnist 40, cifar10 10")
    step_size: float | None = opt(None, "pgd / mifgsm step size", check=o.positive,
                                  default_text="per dataset: mnist 0.01, cifar10 2/255")
    restarts: int = opt(1, "pgd restarts; each sample keeps one that fools the model", check=o.at_least(1))
    decay: float = opt(1.0, "mifgsm momentum decay mu", check=o.non_negative)
    random_start: bool = opt(True, "pgd starts at a random point of the eps-ball",
                             flag="--random-start/--no-random-start")
    train_mode: bool = opt(False, "attack with the model in train mode (dropout on)", flag="--train-mode",
                           default_text="eval mode")
    limit: int | None = opt(None, "attack the first N test samples", check=o.at_least(1), default_text="all")
    batch_size: int = opt(500, "attack batch size", check=o.at_least(1))
    seed: int = opt(0, "seed of pgd's random starts", check=o.seed)
    # PGD's random starts: one stream per batch, or one for all ("stream"; config/legacy.py says why)
    seeding: str = opt("batch", "batch | stream", choices=SEEDINGS, kind="seeding", cli=False)
    data_dir: str | None = opt(None, "where datasets live", **_DATA_DIR)
    device: str = opt("auto", "auto | cpu | cuda", **_DEVICE)


@dataclass(frozen=True)
class ExplainConfig:
    """The settings of one cached explain evaluation of a run."""
    methods: tuple[str, ...] = opt(("grad",), "saliency methods, comma-separated", flag="--method")
    n: int = opt(8, "number of test samples (the first N)", check=o.at_least(1))
    indices: tuple[int, ...] | None = opt(None, "test sample indices I,J,... instead of --n", flag="--index",
                                          check=lambda v: None if v >= 0 else "test sample numbers (0 or more)",
                                          default_text="the first N")
    output: str = opt("logprob", "as mask-eval: the saliency of log p(label | x), or of the logit",
                      choices=MASK_OUTPUTS, kind="output", cli=False)
    baseline: str = opt("authors", "as mask-eval", cli=False)
    data_dir: str | None = opt(None, "where datasets live", **_DATA_DIR)
    device: str = opt("auto", "auto | cpu | cuda", **_DEVICE)



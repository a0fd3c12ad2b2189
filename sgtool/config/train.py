"""The training configuration: a frozen dataclass whose fields are the options of `sgtool train`,
each declared once (options.opt). `None` means "not set": resolution.py fills it from the dataset's
defaults, so the stored config is always complete. This module imports nothing heavy, so that
the command line can read the declarations without loading torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from . import options as o
from .options import ASGT, SGT, opt

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
POOLINGS = ("attention", "max")
OOV_RULES = ("random", "unk")
TEST_SPLITS = ("test", "val")
SUBSETS = ("first", "stratified")
PER_DATASET = "per dataset"


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = opt("synthetic", "a registered name (see `sgtool datasets`), or npz:PATH / pt:PATH for your own file")
    model: str | None = opt(None, "a registered name (see `sgtool datasets`), or package.module:factory",
                            default_text=PER_DATASET)
    trainer: str = opt("sgt", "standard | sgt | asgt", choices=TRAINERS, kind="trainer")
    # SGT (and ASGT) masking; None: the layout's default
    mask_frac: float = opt(0.5, "share of the features SGT masks", check=o.unit_interval, only=SGT)
    kl_weight: float = opt(1.0, "λ, the weight of the KL term", check=o.non_negative, only=SGT)
    mask_fill: str | None = opt(None, "images and series: random | mean | zero | background; text: previous-salient | "
                                "unk | random-token | zero", default_text="random; text: previous-salient", only=SGT)
    saliency_sign: str | None = opt(None, "images and series: abs | signed; text: sum | abs-sum | l2 | grad-x-input",
                                    default_text="abs; text: sum", only=SGT)
    saliency_pass: str = opt("eval", "eval | shared", choices=SALIENCY_PASSES, kind="saliency pass", only=SGT)
    # ASGT's training attack; None: the dataset's attack defaults
    adv_attack: str = opt("pgd", "asgt: pgd | fgsm", choices=ADV_ATTACKS, kind="adversarial attack", only=ASGT)
    adv_eps: float | None = opt(None, "asgt: attack eps", check=o.non_negative, default_text=PER_DATASET, only=ASGT)
    adv_steps: int | None = opt(None, "asgt: attack steps", check=o.at_least(1), default_text=PER_DATASET, only=ASGT)
    adv_step_size: float | None = opt(None, "asgt: attack step size", check=o.positive, default_text=PER_DATASET,
                                      only=ASGT)
    # optimisation
    epochs: int | None = opt(None, "epochs", check=o.at_least(1), default_text=PER_DATASET)
    batch_size: int | None = opt(None, "batch size", check=o.at_least(1), default_text=PER_DATASET)
    # a learning rate above 100 sends any of these optimisers to infinity on the first step
    lr: float | None = opt(None, "learning rate", check=o.positive_at_most(100), default_text=PER_DATASET)
    optimizer: str | None = opt(None, "adadelta | sgd | adam", choices=OPTIMIZERS, kind="optimizer",
                                default_text=PER_DATASET)
    seed: int = opt(0, "seed of the initialisation, the epochs' order and SGT's fills", check=o.seed)
    train_size: int | None = opt(None, "use the first N training samples", check=o.at_least(1), default_text="all")
    test_size: int | None = opt(None, "use the first N test samples", check=o.at_least(1), default_text="all")
    subset: str | None = opt(None, "which samples --train-size and --test-size take: first (the first N) | "
                             "stratified (the first of each class in turn)", choices=SUBSETS, kind="subset",
                             default_text="stratified for datasets whose files are sorted by class (ERASER), else "
                             "first")
    data_sha256: str | None = opt(None, "npz:/pt: datasets: the file's sha256, filled in", cli=False, file=False)
    data_version: int | None = opt(None, "synthetic: 2, or 1 (the easier task: the class pattern alone)", default_text="the newest")
    width: int | None = opt(None, "series and text models: hidden width", check=o.between(1, 4096),
                            default_text="per model")
    heads: int | None = opt(None, "transformer: attention heads, a divisor of the feature count", check=o.at_least(1),
                            default_text="5")
    # text
    max_len: int | None = opt(None, "text: truncate documents to N tokens", check=o.at_least(1), default_text="keep all")
    embeddings: str | None = opt(None, "text: GloVe vectors (.txt, .gz, .zip), a path or one under --data-dir",
                                 default_text="none", hashed=False)  # its sha256 is hashed instead
    embeddings_sha256: str | None = opt(None, "the --embeddings file's sha256, filled in", cli=False, file=False)
    freeze_embeddings: bool | None = opt(None, "text: keep the word vectors fixed",
                                         flag="--freeze-embeddings/--tune-embeddings",
                                         default_text="fixed for ERASER with --embeddings, else tuned")
    pooling: str | None = opt(None, "bilstm: attention | max", choices=POOLINGS, kind="pooling",
                              default_text="attention")
    embed_dropout: float | None = opt(None, "text: dropout on the word vectors in training, in [0, 1)",
                                      check=o.unit_interval, default_text="0.2 on ERASER, else 0")
    oov: str | None = opt(None, "text with --embeddings: the vectors of words the file lacks, random (each its own) | "
                          "unk (the mean vector, as <unk>: ERASER's)", choices=OOV_RULES,
                          kind="rule for words without a vector", default_text="random")
    test_split: str = opt("test", "ERASER: the split to test and evaluate on, test | val", choices=TEST_SPLITS,
                          kind="test split")
    select: str | None = opt(None, "the epoch whose weights the run keeps: last | val (the best validation accuracy) | "
                             "val-loss (the lowest validation NLL)", choices=SELECTS, kind="epoch selection",
                             default_text="val-loss for ERASER, else last")
    # recipes
    recipe: str | None = opt(None, "authors: the SGT authors' MNIST training (batch 512, Adadelta 1.0 without a "
                             "schedule, 100 epochs, the best test epoch kept)", choices=tuple(RECIPES), kind="recipe",
                             default_text="none")
    augment: str | None = opt(None, "images: crop-flip | none", choices=AUGMENTS, kind="augmentation",
                              default_text="crop-flip for cifar10, else none")
    # devices
    precision: str = opt("fp32", "fp32 | bf16 | fp16: autocast for the forward passes (fp16 with a GradScaler)",
                         choices=PRECISIONS, kind="precision", select=False)
    compile: bool = opt(False, "torch.compile the model (pays on GPUs for long runs)", flag="--compile/--no-compile",
                        select=False)
    world_size: int | None = opt(None, "processes of one run (torchrun), filled in", cli=False, file=False)
    sync_bn: bool = opt(False, "with several GPUs: synchronise BatchNorm statistics", flag="--sync-bn/--no-sync-bn",
                        default_text="per process", select=False)
    # not part of the hash: they do not change results
    data_dir: str | None = opt(None, "where datasets live", envvar="SGTOOL_DATA_DIR", default_text="./data",
                               hashed=False, file=False, select=False)
    runs_dir: str | None = opt(None, "where runs live", envvar="SGTOOL_RUNS_DIR", default_text="./runs",
                               hashed=False, file=False, select=False)
    device: str = opt("auto", "auto | cpu | cuda", choices=DEVICES, kind="device", hashed=False, file=False,
                      select=False)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict) -> TrainConfig:
    """A stored config, read as it was written (never re-resolved)."""
    return TrainConfig(**o.normalise_keys(TrainConfig, d, "config"))

"""The `sgtool` command line. Each command builds a config, calls one backend function and
renders the result with rich. Errors a user can cause (SgtoolError) become one line on
stderr with exit code 2 (usage) or 1 (runtime), never a traceback."""

from __future__ import annotations

import functools
import inspect
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from .errors import SgtoolError

try:  # recent typer vendors click; older releases depend on it
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Saliency guided training (SGT, ASGT) and the evaluations that measure it.")
def _live_width(c: Console) -> Console:
    """rich fixes a console's width from COLUMNS when it is made; forgetting it makes every print
    measure the terminal (or COLUMNS) afresh, so a resized terminal, a pipe or a test's COLUMNS
    all get tables of their own width."""
    c._width = None
    return c


console = _live_width(Console())
err_console = _live_width(Console(stderr=True))


def _version(value: bool):
    if value:
        from . import __version__

        typer.echo(f"sgtool {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="print sgtool's version and exit")] = False):
    """Saliency guided training (SGT, ASGT) and the evaluations that measure it."""


def handle_errors(fn):
    """One line and an exit code for every SgtoolError; a clean exit 130 on Ctrl-C."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SgtoolError as e:
            err_console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted", highlight=False)
            raise typer.Exit(130) from None

    return wrapper


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=err_console, transient=False)


def lazy_task(bar: Progress, description: str):
    """update(**fields) for a task of `bar` that is added at its first update, so that a command
    that fails early or finds its result cached draws no empty bar."""
    ids = []

    def update(**fields):
        if not ids:
            ids.append(bar.add_task(description, total=None, info=""))
        bar.update(ids[0], **fields)

    return update


# Training flags, shared by `train` and by the commands that find a run from its config.
Dataset = Annotated[str | None, typer.Option("--dataset", help="a registered name (see `sgtool datasets`), or npz:PATH / pt:PATH for your own file (default: synthetic)")]
Model = Annotated[str | None, typer.Option("--model", help="a registered name (see `sgtool datasets`), or package.module:factory (default: per dataset)")]
Trainer = Annotated[str | None, typer.Option("--trainer", help="standard | sgt | asgt (default: sgt)")]
MaskFrac = Annotated[float | None, typer.Option("--mask-frac", help="share of positions SGT masks (default: 0.5)")]
KlWeight = Annotated[float | None, typer.Option("--kl-weight", help="λ, weight of the KL term (default: 1.0)")]
MaskFill = Annotated[str | None, typer.Option("--mask-fill", help="images and series: random | mean | zero | background; text: previous-salient | unk | random-token | zero (default: random; text: previous-salient)")]
SalSign = Annotated[str | None, typer.Option("--saliency-sign", help="images and series: abs | signed; text: sum | abs-sum | l2 | grad-x-input (default: abs; text: sum)")]
SalPass = Annotated[str | None, typer.Option("--saliency-pass", help="eval | shared (default: eval)")]
AdvAttack = Annotated[str | None, typer.Option("--adv-attack", help="asgt: pgd | fgsm (default: pgd)")]
AdvEps = Annotated[float | None, typer.Option("--adv-eps", help="asgt: attack eps (default: per dataset)")]
AdvSteps = Annotated[int | None, typer.Option("--adv-steps", help="asgt: attack steps (default: per dataset)")]
AdvStep = Annotated[float | None, typer.Option("--adv-step-size", help="asgt: attack step size (default: per dataset)")]
Epochs = Annotated[int | None, typer.Option("--epochs", help="(default: per dataset)")]
BatchSize = Annotated[int | None, typer.Option("--batch-size", help="(default: per dataset)")]
Lr = Annotated[float | None, typer.Option("--lr", help="(default: per dataset)")]
Optim = Annotated[str | None, typer.Option("--optimizer", help="adadelta | sgd | adam (default: per dataset)")]
Seed = Annotated[int | None, typer.Option("--seed", help="(default: 0)")]
Width = Annotated[int | None, typer.Option("--width", help="series and text models: hidden width (default: per model)")]
Embeddings = Annotated[str | None, typer.Option("--embeddings", help="text: GloVe vectors (.txt, .gz, .zip), a path or one under --data-dir")]
MaxLen = Annotated[int | None, typer.Option("--max-len", help="text: truncate documents to N tokens (default: keep all)")]
FreezeEmb = Annotated[bool | None, typer.Option("--freeze-embeddings/--tune-embeddings", help="text: keep the word vectors fixed (default: fixed for ERASER with --embeddings, else tuned)")]
Oov = Annotated[str | None, typer.Option("--oov", help="text with --embeddings: the vectors of words the file lacks, random (each its own) | unk (the mean vector, as <unk>: ERASER's) (default: random)")]
Pooling = Annotated[str | None, typer.Option("--pooling", help="bilstm: attention | max (default: attention)")]
EmbDrop = Annotated[float | None, typer.Option("--embed-dropout", help="text: dropout on the word vectors in training, in [0, 1) (default: 0.2 on ERASER, else 0)")]
TestSplit = Annotated[str | None, typer.Option("--test-split", help="ERASER: the split to test and evaluate on, test | val (default: test)")]
Select = Annotated[str | None, typer.Option("--select", help="the epoch whose weights the run keeps: last | val (the best validation accuracy) | val-loss (the lowest validation NLL) (default: val-loss for ERASER, else last)")]
Recipe = Annotated[str | None, typer.Option("--recipe", help="authors: the SGT authors' MNIST training (batch 512, Adadelta 1.0 without a schedule, 100 epochs, the best test epoch kept)")]
Augment = Annotated[str | None, typer.Option("--augment", help="images: crop-flip | none (default: crop-flip for cifar10, else none)")]
DataVersion = Annotated[int | None, typer.Option("--data-version", help="synthetic: 2 (the default) or 1 (sgtool 0.1's task)")]
Heads = Annotated[int | None, typer.Option("--heads", help="transformer: attention heads, a divisor of the feature count (default: 5)")]
TrainSize = Annotated[int | None, typer.Option("--train-size", help="use the first N training samples")]
TestSize = Annotated[int | None, typer.Option("--test-size", help="use the first N test samples")]
DataDir = Annotated[str | None, typer.Option("--data-dir", envvar="SGTOOL_DATA_DIR", help="where datasets live (default: ./data)")]
RunsDir = Annotated[str | None, typer.Option("--runs-dir", envvar="SGTOOL_RUNS_DIR", help="where runs live (default: ./runs)")]
Device = Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda (default: auto)")]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="YAML file with the same keys; flags win")]


def table(*headers: str, numbers=(), title: str | None = None, caption: str | None = None,
          min_widths: dict | None = None) -> Table:
    """A rich table that reads whole in an 80-column terminal: columns of numbers never wrap
    (a number is never cut), and text columns fold rather than end in an ellipsis. `numbers`
    names the numeric columns (by header); a header may hold a newline to stay narrow;
    `min_widths` keeps short words of a text column whole (status: "completed")."""
    t = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    for h in headers:
        if h in numbers:
            t.add_column(h, no_wrap=True, justify="right")
        else:
            t.add_column(h, overflow="fold", min_width=(min_widths or {}).get(h))
    return t


def method_header(name: str) -> str:
    """A saliency method's name as a narrow, two-line column header: smooth/grad, deeplift/shap."""
    for tail in ("shap", "grad", "authors", "backprop"):
        if name.endswith(tail) and len(name) > len(tail) + 2:
            return name[: -len(tail)].rstrip("-") + "\n" + tail
    return name


def train_flags(**kw) -> dict:
    """The training-config flags of a command call, without the unset ones."""
    return {k: v for k, v in kw.items() if v is not None}


# The training flags by which mask-eval, attack and explain find a run (the hash of that training
# config) in place of RUN ids. train's --batch-size and --seed are --train-batch-size and
# --train-seed there, because attack and mask-eval have a batch size and a seed of their own.
TrainBatch = Annotated[int | None, typer.Option("--train-batch-size", help="select the run trained with this --batch-size")]
TrainSeed = Annotated[int | None, typer.Option("--train-seed", help="select the run trained with this --seed")]
SELECT = {
    "dataset": (Dataset, "dataset"), "model": (Model, "model"), "trainer": (Trainer, "trainer"),
    "mask_frac": (MaskFrac, "mask_frac"), "kl_weight": (KlWeight, "kl_weight"), "mask_fill": (MaskFill, "mask_fill"),
    "saliency_sign": (SalSign, "saliency_sign"), "saliency_pass": (SalPass, "saliency_pass"),
    "adv_attack": (AdvAttack, "adv_attack"), "adv_eps": (AdvEps, "adv_eps"), "adv_steps": (AdvSteps, "adv_steps"),
    "adv_step_size": (AdvStep, "adv_step_size"), "epochs": (Epochs, "epochs"), "lr": (Lr, "lr"),
    "optimizer": (Optim, "optimizer"), "train_size": (TrainSize, "train_size"), "test_size": (TestSize, "test_size"),
    "width": (Width, "width"), "heads": (Heads, "heads"), "embeddings": (Embeddings, "embeddings"),
    "max_len": (MaxLen, "max_len"), "freeze_embeddings": (FreezeEmb, "freeze_embeddings"),
    "oov": (Oov, "oov"), "pooling": (Pooling, "pooling"),
    "embed_dropout": (EmbDrop, "embed_dropout"), "test_split": (TestSplit, "test_split"), "select": (Select, "select"), "recipe": (Recipe, "recipe"),
    "augment": (Augment, "augment"), "data_version": (DataVersion, "data_version"),
    "train_batch_size": (TrainBatch, "batch_size"), "train_seed": (TrainSeed, "seed"),
}


def selects_runs(fn):
    """Add the SELECT flags and --config to a command whose first parameter is `run_ids`, and
    hand it `runs(runs_dir)`: the selected runs, by id prefixes or by those training flags."""
    sig = inspect.signature(fn, eval_str=True)  # this module's annotations are strings (PEP 563)
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ann)
             for name, (ann, _) in SELECT.items()]
    extra.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ConfigFile))

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .store import runs_root, select_runs

        flags = train_flags(**{key: kwargs.pop(name) for name, (_, key) in SELECT.items()})
        config, run_ids = kwargs.pop("config"), kwargs.pop("run_ids")
        return fn(*args, runs=lambda runs_dir: select_runs(runs_root(runs_dir), run_ids, flags, config), **kwargs)

    params = [p for p in sig.parameters.values() if p.name != "runs"]
    wrapper.__signature__ = sig.replace(parameters=[*params, *extra])
    wrapper.__annotations__ = {p.name: p.annotation for p in wrapper.__signature__.parameters.values()}
    return wrapper


@app.command()
@handle_errors
def train(
    dataset: Dataset = None, model: Model = None, trainer: Trainer = None, mask_frac: MaskFrac = None,
    kl_weight: KlWeight = None, mask_fill: MaskFill = None, saliency_sign: SalSign = None,
    saliency_pass: SalPass = None, adv_attack: AdvAttack = None, adv_eps: AdvEps = None,
    adv_steps: AdvSteps = None, adv_step_size: AdvStep = None, epochs: Epochs = None,
    batch_size: BatchSize = None, lr: Lr = None, optimizer: Optim = None, seed: Seed = None,
    width: Width = None, heads: Heads = None, embeddings: Embeddings = None, max_len: MaxLen = None,
    freeze_embeddings: FreezeEmb = None, oov: Oov = None, pooling: Pooling = None, embed_dropout: EmbDrop = None,
    test_split: TestSplit = None, select: Select = None, recipe: Recipe = None, augment: Augment = None, data_version: DataVersion = None,
    train_size: TrainSize = None, test_size: TestSize = None, data_dir: DataDir = None,
    runs_dir: RunsDir = None, device: Device = None, config: ConfigFile = None,
    precision: Annotated[str | None, typer.Option("--precision", help="fp32 | bf16 | fp16: autocast for the forward passes (fp16 with a GradScaler) (default: fp32)")] = None,
    compile: Annotated[bool | None, typer.Option("--compile/--no-compile", help="torch.compile the model (pays on GPUs for long runs)")] = None,
    sync_bn: Annotated[bool | None, typer.Option("--sync-bn/--no-sync-bn", help="with several GPUs: synchronise BatchNorm statistics (default: per process)")] = None,
    nproc: Annotated[int, typer.Option("--nproc", help="train with N processes through torchrun: one per GPU, or CPU processes (gloo)")] = 1,
    force: Annotated[bool, typer.Option("--force", help="retrain even if the run exists")] = False,
):
    """Train a model (standard, SGT or ASGT) and store it under runs/<hash>/."""
    flags = {k: v for k, v in locals().items() if k not in ("config", "force", "nproc")}
    from .config import config_hash, make_config
    from .train import train_run

    if nproc > 1:
        raise typer.Exit(launch_torchrun(nproc, config, train_flags(**flags), force))
    if nproc < 1:
        raise SgtoolError(f"--nproc must be at least 1, got {nproc}")
    cfg = make_config(config, **train_flags(**flags))
    rid = config_hash(cfg)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, process 0 speaks for all
        train_run(cfg, force=force)
        return
    console.print(f"run [bold]{rid}[/bold]: {cfg.dataset} / {cfg.model} / {cfg.trainer}"
                  + (f" mask-frac {cfg.mask_frac}" if cfg.trainer != "standard" else ""), highlight=False)
    with progress_bar() as bar:
        update = lazy_task(bar, "train")

        def show(epoch, epochs, step, steps, loss, acc):
            update(total=epochs * steps, completed=(epoch - 1) * steps + step,
                   description=f"epoch {epoch}/{epochs}", info=f"loss {loss:.4f} acc {acc:.4f}")

        res = train_run(cfg, force=force, on_progress=show)
    if res["already"]:
        console.print(f"already trained: {res['id']}")
        return
    console.print(f"trained {res['id']}: test accuracy [bold]{res['test_acc']:.4f}[/bold] ({res['dir']})")


def launch_torchrun(nproc: int, config, flags: dict, force: bool) -> int:
    """`sgtool train --nproc N`: the same command under torchrun, which starts and watches the N
    processes. The settings travel as a YAML file (defaults < --config < flags, as ever)."""
    import subprocess
    import tempfile

    import yaml

    from .config import load_yaml, make_config, normalise_keys

    values = load_yaml(config) if config else {}
    values.update(normalise_keys(flags, "flags"))
    make_config(None, **values)  # a mistake is one line here, before any process starts
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(values, f)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "sgtool", "train", "--config", f.name, *(["--force"] if force else [])]
    try:
        return subprocess.call(cmd)
    finally:
        Path(f.name).unlink(missing_ok=True)


@app.command()
@handle_errors
def runs(runs_dir: RunsDir = None):
    """List the runs in the store."""
    from .store import list_runs, read_metrics, runs_root

    root = runs_root(runs_dir)
    found, _ = list_runs(root, include_corrupt=True)  # a corrupt run is a row, not only a warning
    if not found:
        console.print(f"no runs in {root}")
        return
    # trainer and mask-frac share a column ("sgt 0.5"), so that the table fits 80 columns with
    # the whole id and status
    t = table("id", "dataset", "model", "trainer", "epoch", "test\nacc", "status",
              numbers=("id", "epoch", "test\nacc"), min_widths={"status": 11, "trainer": 8})
    t.pad_edge = False  # two more columns for the text: 80 columns hold "tsb-middle-box" and "interrupted"
    for r in found:
        c = r["config"]
        if r["status"] == "corrupt":
            t.add_row(r["id"], "-", "-", "-", "-", "-", "corrupt")
            continue
        rows = read_metrics(r["dir"])
        acc = r.get("test_acc", rows[-1]["test_acc"] if rows else None)
        trainer = str(c.get("trainer")) + (f" {c.get('mask_frac')}" if c.get("trainer") != "standard" else "")
        status = r.get("status", "?")
        if status == "running":  # who trains it, as the lock's owner recorded itself
            from .locks import describe
            from .store import lock_owner

            status = f"running ({describe(lock_owner(r['dir']))})"
        t.add_row(r["id"], str(c.get("dataset")), str(c.get("model")), trainer,
                  f"{len(rows)}/{c.get('epochs')}", "-" if acc is None else f"{float(acc):.3f}", status)
    console.print(t)
    bad = [r for r in found if r["status"] == "corrupt"]
    if bad:
        console.print(f"{len(bad)} corrupt: {bad[0]['error']}" + (" (and more)" if len(bad) > 1 else ""),
                      highlight=False, soft_wrap=True)


@app.command()
@handle_errors
def unlock(
    run_id: Annotated[str, typer.Argument(metavar="RUN", help="the run id (a unique prefix)")],
    runs_dir: RunsDir = None,
):
    """Break a run's lock file left by a crashed process on a filesystem without flock."""
    from .locks import describe, owner
    from .locks import unlock as break_lock
    from .store import LOCK, find_run, lock_held, runs_root

    run = find_run(runs_root(runs_dir), run_id, require_completed=False)
    path = run["dir"] / LOCK
    info = owner(path)
    if break_lock(path):
        console.print(f"broke the lock of run {run['id']} (held by {describe(info)})", highlight=False)
    elif lock_held(run["dir"]):
        raise SgtoolError(f"run {run['id']} is being trained by {describe(info)} right now; its lock goes "
                          f"when that process ends")
    else:
        console.print(f"run {run['id']} is not locked", highlight=False)


@app.command()
@handle_errors
def datasets():
    """List the registered datasets and the models that fit each kind of data."""
    from .data import DATASETS
    from .data.series import BACKGROUNDS, TSB_TYPES
    from .models import models_for

    t = table("dataset", "kind", "shape", "classes", "what", numbers=("shape", "classes"), title="datasets")
    for name, spec in sorted(DATASETS.items()):
        if name.startswith("tsb-") and name != "tsb-middle-box":
            continue
        shape = "x".join(str(d) for d in spec.shape) if spec.layout != "tokens" else "-"
        what = spec.description
        if name == "tsb-middle-box":
            name = "tsb-TYPE-BACKGROUND"
            what = (f"TSB synthetic series with a ground-truth box; TYPE: {', '.join(TSB_TYPES)}; "
                    f"BACKGROUND: {', '.join(BACKGROUNDS)}")
        t.add_row(name, spec.layout, shape, str(spec.num_classes), what)
    console.print(t)
    m = table("kind", "models", title="models")
    for kind in ("image", "series", "tokens"):
        m.add_row(kind, ", ".join(models_for(kind)))
    console.print(m)
    console.print("Also: --dataset npz:PATH or pt:PATH (your own file), --model package.module:factory "
                  "(your own model); see the README.", highlight=False)


# --- mask-eval command (issue 3) ---


@app.command("mask-eval")
@handle_errors
@selects_runs
def mask_eval_cmd(
    run_ids: Annotated[list[str] | None, typer.Argument(metavar="RUN...", help="run ids (unique prefixes); or select one run by its training flags")] = None,
    method: Annotated[str | None, typer.Option("--method", help="comma-separated: grad, smoothgrad, ig, deeplift, deeplift-authors, gradshap, deepliftshap, inputxgrad, guided-backprop, occlusion, random; tsr-METHOD for series \\[images and series: grad,smoothgrad,ig,deeplift,gradshap,deepliftshap,random; text: grad,ig,smoothgrad,random]")] = None,
    fractions: Annotated[str | None, typer.Option("--fractions", help="comma-separated shares of the features removed, in [0, 1) \\[0,0.1,...,0.9; text: 0.01,0.05,0.1,0.2,0.5]")] = None,
    order: Annotated[str | None, typer.Option("--order", help="morf: most salient first | lerf: least salient first \\[morf]")] = None,
    fill: Annotated[str | None, typer.Option("--fill", help="images: background | mean | zero | random | blur; series: background | random | mean | zero \\[images: background; series: background where the data has a process, else random]")] = None,
    target: Annotated[str | None, typer.Option("--target", help="the class explained: label | predicted \\[label; text: predicted]")] = None,
    baseline: Annotated[str | None, typer.Option("--baseline", help="reference of ig, deeplift and the shap methods: authors (uniform noise in the model's normalised units, as the SGT authors) | zero | uniform | random (0.1's) \\[authors; text: zero, the <pad> embedding]")] = None,
    output: Annotated[str | None, typer.Option("--output", help="the output explained: logprob (log p, as the SGT authors' network gave it) | logit \\[logprob]")] = None,
    ties: Annotated[str | None, typer.Option("--ties", help="equal scores in random (seeded) order | index order (0.1's rule) \\[random]")] = None,
    reduce: Annotated[str | None, typer.Option("--reduce", help="images: a position's score, abs (mean over channels of |attribution|) | abs-mean (|mean over channels|, the authors') \\[abs]")] = None,
    random_seeds: Annotated[int | None, typer.Option("--random-seeds", help="the random ranking is averaged over this many seeds \\[1; text: 5]")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="evaluate the first N test samples \\[all]")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="evaluation batch size \\[250]")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="seed of the fill, the random baseline and the methods' noise \\[0]")] = None,
    force: Annotated[bool, typer.Option("--force", help="evaluate again even if cached")] = False,
    data_dir: DataDir = None, runs_dir: RunsDir = None, device: Device = None, *, runs,
):
    """Accuracy drop as each run's most salient features are removed, per saliency method; deletion
    and insertion AUC; saliency precision and recall against ground truth where the data has it."""
    from .config import mask_eval_config
    from .evaluate import mask_eval

    cfg = mask_eval_config(methods=method, fractions=fractions, order=order, fill=fill, target=target,
                           baseline=baseline, output=output, ties=ties, reduce=reduce, random_seeds=random_seeds,
                           limit=limit, batch_size=batch_size, seed=seed, data_dir=data_dir, device=device)
    for run in runs(runs_dir):
        with progress_bar() as bar:
            update = lazy_task(bar, f"mask-eval {run['id']}")

            def show(method, done, total, update=update):
                update(completed=done, total=total, info=method)

            res = mask_eval(run, cfg, force=force, on_progress=show)
        print_mask_eval(run, res)


# The summary's metrics, in tables narrow enough for 80 columns: (title, [(key, header)]).
SUMMARY_TABLES = [
    ("accuracy drop: area under the curve, and deletion / insertion AUC",
     [("auc", "auc"), ("auc_vs_random", "vs random"), ("deletion_auc", "deletion"),
      ("insertion_auc", "insertion")]),
    ("ground truth: weighted precision and recall of the saliency",
     [("aup", "AUP"), ("aur", "AUR"), ("aupr", "AUPR"), ("precision_at_gt", "P@GT"),
      ("diff_aup", "ΔAUP perm"), ("diff_aur", "ΔAUR perm")]),
    ("ground truth by step and by feature",
     [("time_aup", "time AUP"), ("time_aur", "time AUR"), ("feature_aup", "feat AUP"),
      ("feature_aur", "feat AUR")]),
    ("ERASER faithfulness (AOPC over the fractions; @r: at the rationales' share)",
     [("comprehensiveness", "compr"), ("sufficiency", "suff"), ("comprehensiveness_at_r", "compr@r"),
      ("sufficiency_at_r", "suff@r")]),
    ("ERASER plausibility against the human rationales",
     [("auprc", "AUPRC"), ("token_precision", "tok P"), ("token_recall", "tok R"), ("token_f1", "tok F1"),
      ("iou_f1", "IOU F1")]),
]


def num(v, signed: bool = False) -> str:
    """A number as every table prints it: 3 decimals, '-' for none."""
    return "-" if v is None else (f"{v:+.3f}" if signed else f"{v:.3f}")


def print_mask_eval(run: dict, res: dict) -> None:
    """A header line, the accuracy curve (fractions as rows, methods as columns) and the summary
    metrics, each table narrow enough for an 80-column terminal."""
    c, cfg = run["config"], res["config"]
    n = res["rows"][0]["n"] if res["rows"] else 0
    what = f"order {cfg.order}, fill {cfg.fill}" if cfg.fill else "tokens removed"
    console.print(f"run [bold]{run['id']}[/bold] ({c.get('dataset')} / {c.get('model')} / {c.get('trainer')}): "
                  f"clean accuracy {res['clean_accuracy']:.3f}, n {n}, {what}"
                  f"{' (cached)' if res['cached'] else ''}", highlight=False, soft_wrap=True)
    curves = [("accuracy", "accuracy as the most salient features are removed"),
              ("comprehensiveness", "comprehensiveness: p(ŷ|x) - p(ŷ|x without the top tokens) (higher is better)"),
              ("sufficiency", "sufficiency: p(ŷ|x) - p(ŷ|the top tokens alone) (lower is better)")]
    methods = list(dict.fromkeys(r["method"] for r in res["rows"]))
    heads = [method_header(m) for m in methods]
    for key, title in curves:
        if not res["rows"] or key not in res["rows"][0]:
            continue
        val = {(r["method"], r["fraction"]): r[key] for r in res["rows"]}
        t = table("removed" if key == "accuracy" else "top", *heads, numbers=("removed", "top", *heads), title=title)
        for f in sorted({r["fraction"] for r in res["rows"]}):
            t.add_row(f"{f:g}", *[num(val.get((m, f))) for m in methods])
        console.print(t)
    for title, keys in SUMMARY_TABLES:
        keys = [(k, h) for k, h in keys if any(s.get(k) is not None for s in res["summary"])]
        if not keys:
            continue
        t = table("method", *[h for _, h in keys], numbers=[h for _, h in keys], title=title)
        for s in res["summary"]:
            t.add_row(s["method"], *[num(s.get(k), k.startswith(("auc_vs", "diff"))) for k, _ in keys])
        console.print(t)
    console.print(f"written: {res['path'].with_suffix('')}.csv, .summary.csv, .json", highlight=False,
                  soft_wrap=True)


# --- attack command (issue 4) ---


@app.command("attack")
@handle_errors
@selects_runs
def attack_cmd(
    run_ids: Annotated[list[str] | None, typer.Argument(metavar="RUN...", help="run ids (unique prefixes); or select one run by its training flags")] = None,
    method: Annotated[str | None, typer.Option("--method", help="comma-separated: fgsm, pgd, mifgsm \\[pgd]")] = None,
    eps: Annotated[str | None, typer.Option("--eps", help="comma-separated L-inf radii in pixels [0, 1], e.g. 0.1,0.2 or 8/255 \\[per dataset: mnist 0.3, cifar10 8/255]")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="pgd / mifgsm steps \\[per dataset: mnist 40, cifar10 10]")] = None,
    step_size: Annotated[float | None, typer.Option("--step-size", help="pgd / mifgsm step size \\[per dataset: mnist 0.01, cifar10 2/255]")] = None,
    restarts: Annotated[int | None, typer.Option("--restarts", help="pgd restarts; each sample keeps one that fools the model \\[1]")] = None,
    decay: Annotated[float | None, typer.Option("--decay", help="mifgsm momentum decay mu \\[1.0]")] = None,
    random_start: Annotated[bool, typer.Option("--random-start/--no-random-start", help="pgd starts at a random point of the eps-ball")] = True,
    train_mode: Annotated[bool, typer.Option("--train-mode", help="attack with the model in train mode (dropout on) \\[eval mode]")] = False,
    limit: Annotated[int | None, typer.Option("--limit", help="attack the first N test samples \\[all]")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="attack batch size \\[500]")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="seed of pgd's random starts \\[0]")] = None,
    save_examples: Annotated[bool, typer.Option("--save-examples", help="also write the adversarial examples (safetensors)")] = False,
    force: Annotated[bool, typer.Option("--force", help="attack again even if cached")] = False,
    data_dir: DataDir = None, runs_dir: RunsDir = None, device: Device = None, *, runs,
):
    """Robust accuracy under FGSM, PGD and MI-FGSM for each eps, and the per-sample worst case
    over the methods; the model is attacked in eval mode unless --train-mode."""
    from .config import attack_config
    from .evaluate import attack_eval

    cfg = attack_config(methods=method, eps=eps, steps=steps, step_size=step_size, restarts=restarts, decay=decay,
                        random_start=random_start, train_mode=train_mode, limit=limit, batch_size=batch_size,
                        seed=seed, data_dir=data_dir, device=device)
    for run in runs(runs_dir):
        with progress_bar() as bar:
            update = lazy_task(bar, f"attack {run['id']}")

            def show(done, total, method, eps, update=update):
                update(completed=done, total=total, info=f"{method} eps {eps:g}")

            res = attack_eval(run, cfg, save_examples=save_examples, force=force, on_progress=show)
        print_attack(run, res)


def print_attack(run: dict, res: dict) -> None:
    """A header line, a table of accuracy (rows: methods and worst; columns: clean and each
    eps), the warnings in yellow, and where the results went."""
    c, rows = run["config"], res["rows"]
    console.print(f"run [bold]{run['id']}[/bold] ({c.get('dataset')} / {c.get('model')} / {c.get('trainer')}): "
                  f"clean accuracy {res['clean_accuracy']:.3f}, n {rows[0]['n']}"
                  f"{' (cached)' if res['cached'] else ''}", highlight=False, soft_wrap=True)
    eps = list(dict.fromkeys(r["eps"] for r in rows if r["method"] != "clean"))
    from .report.tables import fmt_eps

    heads = [f"eps\n{fmt_eps(e)}" for e in eps]
    t = table("method", "clean", *heads, numbers=("clean", *heads), title="robust accuracy")
    for m in dict.fromkeys(r["method"] for r in rows if r["method"] != "clean"):
        acc = {r["eps"]: r["accuracy"] for r in rows if r["method"] == m}
        t.add_row(m, num(res["clean_accuracy"]), *[num(acc[e]) for e in eps],
                  style="bold" if m == "worst" else None)
    console.print(t)
    for w in res["warnings"]:
        err_console.print(f"[yellow]warning:[/yellow] {w}", highlight=False, soft_wrap=True)
    written = f"{res['path']}, .json" + (f", {res['examples'].name}" if res.get("examples") else "")
    console.print(f"written: {written}", highlight=False, soft_wrap=True)

# --- explain command (issue 5) ---


def parse_list(text: str | None, flag: str, cast=str) -> list | None:
    """'a,b,c' -> ['a', 'b', 'c'] (cast each); one line naming the flag when a value is bad."""
    from .errors import UsageError

    if text is None:
        return None
    try:
        return [cast(t.strip()) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"{flag} expects a comma-separated list, got '{text}'") from None


@app.command()
@handle_errors
@selects_runs
def explain(
    run_ids: Annotated[list[str] | None, typer.Argument(metavar="RUN...", help="run ids (prefixes); or select one run by its training flags")] = None,
    method: Annotated[str, typer.Option("--method", help="saliency methods, comma-separated")] = "grad",
    n: Annotated[int, typer.Option("--n", help="number of test samples (the first N)")] = 8,
    index: Annotated[str | None, typer.Option("--index", help="test sample indices I,J,... instead of --n")] = None,
    out: Annotated[Path, typer.Option("--out", help="the PNG to write; the raw maps go next to it (.safetensors)")] = Path("explain.png"),
    data_dir: DataDir = None, runs_dir: RunsDir = None, device: Device = None, *, runs,
):
    """Saliency maps of runs side by side: one row per sample, one column per (run, method)."""
    from .report import explain as explain_maps

    methods = parse_list(method, "--method")
    indices = parse_list(index, "--index", int)
    selected = runs(runs_dir)
    with err_console.status(f"saliency of {len(selected)} run(s) x {len(methods)} method(s)"):
        res = explain_maps(selected, methods, n=n, indices=indices, out=out, data_dir=data_dir, device=device or "auto")
    w, h = res["size"]
    html = f", the page {res['html']}" if res.get("html") else ""
    console.print(f"wrote [bold]{res['png']}[/bold] ({w}x{h} px){html} and the raw maps {res['maps']}",
                  highlight=False, soft_wrap=True)


# --- report and sweep commands (issue 5) ---


def print_frame(df, title: str | None = None, caption: str | None = None, labels=None) -> None:
    """A DataFrame of display strings as rich tables that fit the terminal: the label columns
    (those up to `n`, or `labels`) start every table, and the value columns are split over as
    many tables as the width needs, so that no number is cut."""
    df = df.rename(columns=str)
    cols = list(df.columns)
    if labels is None:
        labels = cols[: cols.index("n") + 1] if "n" in cols else cols[:1]
    values = [c for c in cols if c not in labels]

    def width(c):  # a column's printed width: its widest cell or header word, plus borders
        words = [len(w) for w in c.split()] if c in labels else [len(c)]  # value columns never wrap
        return max([len(str(v)) for v in df[c]] + words) + 3

    keys = [c for c in labels if c not in ("n", "method")]
    if len(keys) > 1 and sum(width(c) for c in labels) > console.width // 2:
        # Too many label columns to leave room for the numbers (runs of several kinds of data
        # differ in many settings): number the settings' combinations and print what each
        # number stands for above the table.
        combos = list(dict.fromkeys(df[keys].itertuples(index=False, name=None)))
        ids = {c: str(i + 1) for i, c in enumerate(combos)}
        if title:
            console.print(f"[italic]{title}[/italic]", highlight=False)
            title = None
        legend = Table.grid(padding=(0, 1))
        legend.add_column(justify="right", style="bold")
        legend.add_column(overflow="fold")  # a hanging indent under its number
        for c, i in ids.items():
            legend.add_row(i, " · ".join(f"{k} {v}" for k, v in zip(keys, c) if v != "-"))
        console.print(legend, highlight=False)
        df = df.assign(**{"#": [ids[c] for c in df[keys].itertuples(index=False, name=None)]})
        labels = ["#"] + [c for c in labels if c not in keys]
        df = df[labels + values]
    room = max(console.width - 1 - sum(width(c) for c in labels), 20)
    chunks, cur, used = [], [], 0
    for c in values:
        if cur and used + width(c) > room:
            chunks.append(cur)
            cur, used = [], 0
        cur.append(c)
        used += width(c)
    chunks.append(cur)
    for i, chunk in enumerate(chunks):
        part = f" ({i + 1}/{len(chunks)})" if len(chunks) > 1 else ""
        t = table(*labels, *chunk, numbers=chunk, title=f"{title}{part}" if title else None,
                  caption=caption or None)
        for row in df[labels + chunk].itertuples(index=False):
            t.add_row(*[str(v) for v in row])
        console.print(t)


@app.command()
@handle_errors
def report(
    runs_dir: RunsDir = None,
    format: Annotated[str, typer.Option("--format", help="table | md | csv | latex | html")] = "table",
    out: Annotated[Path | None, typer.Option("--out", help="directory for the report files and plots [html: ./reports]")] = None,
    where: Annotated[list[str] | None, typer.Option("--where", help="key=value on the training config, repeatable")] = None,
):
    """Tables and plots of every run and its evaluations; seeds grouped as mean ± std (n)."""
    from .report import collect, write_report
    from .store import runs_root

    def warn(lines):
        for w in lines:
            err_console.print(f"[yellow]warning:[/yellow] {w}", highlight=False, soft_wrap=True)

    root = runs_root(runs_dir)
    rep = collect(root, where)
    if rep.empty:
        warn(rep.warnings)
        raise SgtoolError(rep.empty_message(where))
    res = write_report(rep, format, out)
    warn(rep.warnings)  # after rendering: unreadable saliency maps show up while plotting
    if format == "table":
        for title, (df, caption) in res["tables"].items():
            print_frame(df, title, caption)
    elif res["text"] is not None:
        typer.echo(res["text"], nl=False)
    if res.get("report"):
        console.print(f"report: [bold]{res['report']}[/bold]", highlight=False, soft_wrap=True)
    elif res["files"]:
        console.print(f"wrote {len(res['files'])} files to [bold]{res['files'][0].parent}[/bold]", highlight=False,
                      soft_wrap=True)


def print_rows(rows: list[dict], title: str) -> None:
    """Summary rows (dicts with the same keys) as a rich table; floats to 4 digits, None as '-'.
    Columns with one value in every row move into the caption, to fit narrow terminals."""
    show = lambda v: "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    const = [k for k in rows[0] if len(rows) > 1 and len({show(r[k]) for r in rows}) == 1]
    keys = [k for k in rows[0] if k not in const]
    import pandas as pd

    df = pd.DataFrame([{k.replace("_", "-"): show(r[k]) for k in keys} for r in rows])
    caption = " · ".join(f"{k.replace('_', '-')} {show(rows[0][k])}" for k in const) or None
    labels = [c for c in ("experiment", "run") if c in df.columns] or list(df.columns[:1])
    print_frame(df, title, caption, labels=labels)


@app.command()
@handle_errors
def sweep(
    path: Annotated[str, typer.Argument(metavar="EXPERIMENTS.yaml", help="the experiments file")],
    only: Annotated[str | None, typer.Option("--only", help="run only these experiments, comma-separated")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list the cells and what is cached; run nothing")] = False,
    executor: Annotated[str, typer.Option("--executor", help="inline (this process) | local (submitit jobs on this machine) | slurm (a SLURM job array); local and slurm need sgtool[cluster]")] = "inline",
    jobs: Annotated[int | None, typer.Option("--jobs", help="local / slurm: at most N jobs at a time \\[local: 1; slurm: all]")] = None,
    gpus_per_job: Annotated[int, typer.Option("--gpus-per-job", help="local / slurm: GPUs per job")] = 0,
    slurm_partition: Annotated[str | None, typer.Option("--slurm-partition", help="slurm: the partition")] = None,
    slurm_time: Annotated[int | None, typer.Option("--slurm-time", help="local / slurm: minutes per job before it is stopped (and, on SLURM, requeued to resume) \\[1440]")] = None,
    shard: Annotated[str | None, typer.Option("--shard", help="i/N: take every N-th cell from the i-th (N plain processes split one sweep)")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="at the end, wait for cells other processes are running \\[wait]")] = True,
    runs_dir: RunsDir = None, data_dir: DataDir = None, device: Device = None,
):
    """Run experiments: every cell of each grid through train -> mask-eval -> attack -> explain, cached and resumable; many sweeps may share one runs dir."""
    from .store import runs_root
    from .sweep import parse_shard, plan, run_sweep

    kw = dict(only=only, runs_dir=runs_dir, data_dir=data_dir, device=device)
    plan(path, **kw)  # a mistake in the file is reported before the progress display starts
    parse_shard(shard)
    kw.update(shard=shard)
    if dry_run:
        rows = run_sweep(path, dry_run=True, **kw)
        print_rows(rows, f"{len(rows)} cells (dry run: nothing was run)")
        return
    with progress_bar() as bar:
        overall = bar.add_task("sweep", total=None, info="")
        stage = bar.add_task("", total=None, info="", visible=False)

        def show(event, **e):
            if event == "plan":
                bar.update(overall, total=e["steps"], info=f"{e['cells']} cells")
            elif event == "stage":
                bar.update(overall, completed=e["step"] - 1, description=f"{e['experiment']} {e['cell']}/{e['cells']}",
                           info=f"{e['stage'].replace('_', '-')} {e['run']}")
                bar.reset(stage, total=None, description=f"  {e['stage'].replace('_', '-')}", info="", visible=True)
            elif event == "inner":
                bar.update(stage, completed=e["completed"], total=e["total"], info=e["info"])
            elif event == "wait":
                bar.update(overall, info=f"waiting for {e['cells']} cell(s) other processes run")

        rows = run_sweep(path, on_progress=show, executor=executor, jobs=jobs, gpus_per_job=gpus_per_job,
                         slurm_partition=slurm_partition, slurm_time=slurm_time, wait=wait, **kw)
        bar.update(overall, completed=bar.tasks[overall].total, info="done")
        bar.update(stage, visible=False)
    print_rows(rows, f"sweep: {len(rows)} cells")
    console.print(f"tables and plots: sgtool report --runs-dir {runs_root(runs_dir)} --format html", highlight=False)


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def main():
    from .process import tune_process

    tune_process()  # before torch loads: passive OpenMP waiting, glibc malloc thresholds
    # `kill` (SIGTERM) is treated like Ctrl-C: the run is saved and marked interrupted.
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        code = app(prog_name="sgtool", standalone_mode=False)
    except ClickException as e:
        # Typer/click's own parse errors (a non-numeric --epochs, an unknown flag) as one line.
        ctx = getattr(e, "ctx", None)
        cmd = ctx.command_path if ctx else "sgtool"
        err_console.print(f"[red]error:[/red] {e.format_message()} (see `{cmd} --help`)", highlight=False,
                          soft_wrap=True)
        return e.exit_code
    except typer.Abort:
        err_console.print("interrupted", highlight=False)
        return 130
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())

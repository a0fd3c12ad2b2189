"""The `sgtool` command line. Each command builds a config, calls one backend function and
renders the result with rich. Errors a user can cause (SgtoolError) become one line on
stderr with exit code 2 (usage) or 1 (runtime), never a traceback."""

from __future__ import annotations

import functools
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

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Saliency guided training (SGT, ASGT) and the evaluations that measure it.")
console = Console()
err_console = Console(stderr=True)


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


# Training flags, shared by `train` and by the commands that find a run from its config.
Dataset = Annotated[str | None, typer.Option("--dataset", help="synthetic | mnist | fashion-mnist | cifar10 [synthetic]")]
Model = Annotated[str | None, typer.Option("--model", help="mnist-cnn | small-cnn | mlp | resnet20 | resnet18 [per dataset]")]
Trainer = Annotated[str | None, typer.Option("--trainer", help="standard | sgt | asgt [sgt]")]
MaskFrac = Annotated[float | None, typer.Option("--mask-frac", help="share of positions SGT masks [0.5]")]
KlWeight = Annotated[float | None, typer.Option("--kl-weight", help="λ, weight of the KL term [1.0]")]
MaskFill = Annotated[str | None, typer.Option("--mask-fill", help="random | mean | zero [random]")]
SalSign = Annotated[str | None, typer.Option("--saliency-sign", help="abs | signed [abs]")]
SalPass = Annotated[str | None, typer.Option("--saliency-pass", help="eval | shared [eval]")]
AdvAttack = Annotated[str | None, typer.Option("--adv-attack", help="asgt: pgd | fgsm [pgd]")]
AdvEps = Annotated[float | None, typer.Option("--adv-eps", help="asgt: attack eps [per dataset]")]
AdvSteps = Annotated[int | None, typer.Option("--adv-steps", help="asgt: attack steps [per dataset]")]
AdvStep = Annotated[float | None, typer.Option("--adv-step-size", help="asgt: attack step size [per dataset]")]
Epochs = Annotated[int | None, typer.Option("--epochs", help="[per dataset]")]
BatchSize = Annotated[int | None, typer.Option("--batch-size", help="[per dataset]")]
Lr = Annotated[float | None, typer.Option("--lr", help="[per dataset]")]
Optim = Annotated[str | None, typer.Option("--optimizer", help="adadelta | sgd | adam [per dataset]")]
Seed = Annotated[int | None, typer.Option("--seed", help="[0]")]
TrainSize = Annotated[int | None, typer.Option("--train-size", help="use the first N training samples")]
TestSize = Annotated[int | None, typer.Option("--test-size", help="use the first N test samples")]
DataDir = Annotated[str | None, typer.Option("--data-dir", envvar="SGTOOL_DATA_DIR", help="where datasets live [./data]")]
RunsDir = Annotated[str | None, typer.Option("--runs-dir", envvar="SGTOOL_RUNS_DIR", help="where runs live [./runs]")]
Device = Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda [auto]")]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="YAML file with the same keys; flags win")]


def train_flags(**kw) -> dict:
    """The training-config flags of a command call, without the unset ones."""
    return {k: v for k, v in kw.items() if v is not None}


@app.command()
@handle_errors
def train(
    dataset: Dataset = None, model: Model = None, trainer: Trainer = None, mask_frac: MaskFrac = None,
    kl_weight: KlWeight = None, mask_fill: MaskFill = None, saliency_sign: SalSign = None,
    saliency_pass: SalPass = None, adv_attack: AdvAttack = None, adv_eps: AdvEps = None,
    adv_steps: AdvSteps = None, adv_step_size: AdvStep = None, epochs: Epochs = None,
    batch_size: BatchSize = None, lr: Lr = None, optimizer: Optim = None, seed: Seed = None,
    train_size: TrainSize = None, test_size: TestSize = None, data_dir: DataDir = None,
    runs_dir: RunsDir = None, device: Device = None, config: ConfigFile = None,
    force: Annotated[bool, typer.Option("--force", help="retrain even if the run exists")] = False,
):
    """Train a model (standard, SGT or ASGT) and store it under runs/<hash>/."""
    flags = {k: v for k, v in locals().items() if k not in ("config", "force")}
    from .config import config_hash, make_config
    from .train import train_run

    cfg = make_config(config, **train_flags(**flags))
    rid = config_hash(cfg)
    console.print(f"run [bold]{rid}[/bold]: {cfg.dataset} / {cfg.model} / {cfg.trainer}"
                  + (f" mask-frac {cfg.mask_frac}" if cfg.trainer != "standard" else ""), highlight=False)
    with progress_bar() as bar:
        task = bar.add_task("train", total=None, info="")

        def show(epoch, epochs, step, steps, loss, acc):
            bar.update(task, total=epochs * steps, completed=(epoch - 1) * steps + step,
                       description=f"epoch {epoch}/{epochs}",
                       info=f"loss {loss:.4f} acc {acc:.4f}")

        res = train_run(cfg, force=force, on_progress=show)
    if res["already"]:
        console.print(f"already trained: {res['id']}")
        return
    console.print(f"trained {res['id']}: test accuracy [bold]{res['test_acc']:.4f}[/bold] ({res['dir']})")


@app.command()
@handle_errors
def runs(runs_dir: RunsDir = None):
    """List the runs in the store."""
    from .store import list_runs, read_metrics, runs_root

    root = runs_root(runs_dir)
    found, warnings = list_runs(root)
    for w in warnings:
        err_console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
    if not found:
        console.print(f"no runs in {root}")
        return
    t = Table("id", "dataset", "model", "trainer", "mask-frac", "epochs", "test acc", "status")
    for r in found:
        c = r["config"]
        rows = read_metrics(r["dir"])
        acc = f"{float(rows[-1]['test_acc']):.4f}" if rows else "-"
        mf = str(c.get("mask_frac")) if c.get("trainer") != "standard" else "-"
        t.add_row(r["id"], c.get("dataset"), c.get("model"), c.get("trainer"), mf,
                  f"{len(rows)}/{c.get('epochs')}", acc, r.get("status", "?"))
    console.print(t)


# --- mask-eval command (issue 3) ---

# --- attack command (issue 4) ---

# --- explain command (issue 5) ---

# --- report and sweep commands (issue 5) ---


def main():
    # `kill` (SIGTERM) is treated like Ctrl-C: the run is saved and marked interrupted.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    app(prog_name="sgtool")


if __name__ == "__main__":
    sys.exit(main())

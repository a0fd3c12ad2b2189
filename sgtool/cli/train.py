"""`sgtool train`, and the commands about the store and the registries: runs, unlock, datasets."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ..config import TrainConfig
from ..errors import SgtoolError
from .app import app, handle_errors
from .options import ConfigFile, RunsDir, flags
from .render import console, lazy_task, progress_bar, say, table, warn


@app.command()
@handle_errors
@flags(TrainConfig)
def train(
    config: ConfigFile = None,
    nproc: Annotated[int, typer.Option("--nproc", help="train with N processes through torchrun: one per GPU, "
                                                        "or CPU processes (gloo)")] = 1,
    force: Annotated[bool, typer.Option("--force", help="retrain even if the run exists")] = False,
    *, values,
):
    """Train a model (standard, SGT or ASGT) and store it under runs/<hash>/."""
    from ..config import config_hash, make_config
    from ..train import train_run

    if nproc > 1:
        raise typer.Exit(launch_torchrun(nproc, config, values, force))
    if nproc < 1:
        raise SgtoolError(f"--nproc must be at least 1, got {nproc}")
    cfg = make_config(config, **values)
    rid = config_hash(cfg)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, process 0 speaks for all
        train_run(cfg, force=force)
        return
    say(f"run {rid}: {cfg.dataset} / {cfg.model} / {cfg.trainer}"
        + (f" mask-frac {cfg.mask_frac}" if cfg.trainer != "standard" else ""))
    with progress_bar() as bar:
        update = lazy_task(bar, "train")

        def show(epoch, epochs, step, steps, loss, acc):
            update(total=epochs * steps, completed=(epoch - 1) * steps + step,
                   description=f"epoch {epoch}/{epochs}", info=f"loss {loss:.4f} acc {acc:.4f}")

        res = train_run(cfg, force=force, on_progress=show)
    warn(res.get("warnings", []))
    if res["already"]:
        say(f"already trained: {res['id']}")
        return
    console.print(f"trained {res['id']}: test accuracy [bold]{res['test_acc']:.4f}[/bold] ({escape(str(res['dir']))})")


def launch_torchrun(nproc: int, config, flags: dict, force: bool) -> int:
    """`sgtool train --nproc N`: the same command under torchrun, which starts and watches the N
    processes. The settings travel as a YAML file (defaults < --config < flags, as ever)."""
    import subprocess
    import tempfile

    import yaml

    from ..config import load_yaml, make_config, normalise_keys

    values = load_yaml(config, TrainConfig) if config else {}
    values.update(normalise_keys(TrainConfig, flags, "flags"))
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
    from ..locks import describe
    from ..store import list_runs, lock_owner, read_metrics, runs_root

    root = runs_root(runs_dir)
    found, _ = list_runs(root, include_corrupt=True)  # a corrupt run is a row, not only a warning
    if not found:
        say(f"no runs in {root}")
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
            status = f"running ({describe(lock_owner(r['dir']))})"
        t.add_row(r["id"], str(c.get("dataset")), str(c.get("model")), trainer,
                  f"{len(rows)}/{c.get('epochs')}", "-" if acc is None else f"{float(acc):.3f}", status)
    console.print(t)
    bad = [r for r in found if r["status"] == "corrupt"]
    if bad:
        say(f"{len(bad)} corrupt: {bad[0]['error']}" + (" (and more)" if len(bad) > 1 else ""))


@app.command()
@handle_errors
def unlock(
    run_id: Annotated[str, typer.Argument(metavar="RUN", help="the run id (a unique prefix)")],
    runs_dir: RunsDir = None,
):
    """Break a run's lock file left by a crashed process on a filesystem without flock."""
    from ..locks import describe, owner
    from ..locks import unlock as break_lock
    from ..store import LOCK, find_run, lock_held, runs_root

    run = find_run(runs_root(runs_dir), run_id, require_completed=False)
    path = run["dir"] / LOCK
    info = owner(path)
    if break_lock(path):
        say(f"broke the lock of run {run['id']} (held by {describe(info)})")
    elif lock_held(run["dir"]):
        raise SgtoolError(f"run {run['id']} is being trained by {describe(info)} right now; its lock goes "
                          f"when that process ends")
    else:
        say(f"run {run['id']} is not locked")


@app.command()
@handle_errors
def datasets():
    """List the registered datasets and the models that fit each kind of data."""
    from ..data import DATASETS
    from ..data.series import BACKGROUNDS, TSB_TYPES
    from ..models import models_for

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
    say("Also: --dataset npz:PATH or pt:PATH (your own file), --model package.module:factory "
        "(your own model); see the docs.")

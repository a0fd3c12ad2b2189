"""The evaluation commands: mask-eval, attack and explain. Each takes its config's options, and
finds its runs by id prefixes or by the training flags that made them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..config import AttackConfig, ExplainConfig, MaskEvalConfig
from .app import app, handle_errors
from .options import flags
from .render import err_console, lazy_task, print_attack, print_mask_eval, progress_bar, say

RunIds = Annotated[list[str] | None, typer.Argument(metavar="RUN...", help="run ids (unique prefixes); or select one "
                                                    "run by its training flags")]


@app.command("mask-eval")
@handle_errors
@flags(MaskEvalConfig, select=True)
def mask_eval_cmd(
    run_ids: RunIds = None,
    force: Annotated[bool, typer.Option("--force", help="evaluate again even if cached")] = False,
    *, values, runs,
):
    """Accuracy drop as each run's most salient features are removed, per saliency method; deletion
    and insertion AUC; saliency precision and recall against ground truth where the data has it."""
    from ..config import mask_eval_config
    from ..evaluate import mask_eval

    cfg = mask_eval_config(**values)
    for run in runs():
        with progress_bar() as bar:
            update = lazy_task(bar, f"mask-eval {run['id']}")

            def show(method, done, total, update=update):
                update(completed=done, total=total, info=method)

            res = mask_eval(run, cfg, force=force, on_progress=show)
        print_mask_eval(run, res)


@app.command("attack")
@handle_errors
@flags(AttackConfig, select=True)
def attack_cmd(
    run_ids: RunIds = None,
    save_examples: Annotated[bool, typer.Option("--save-examples", help="also write the adversarial examples "
                                                                        "(safetensors)")] = False,
    force: Annotated[bool, typer.Option("--force", help="attack again even if cached")] = False,
    *, values, runs,
):
    """Robust accuracy under FGSM, PGD and MI-FGSM for each eps, and the per-sample worst case
    over the methods; the model is attacked in eval mode unless --train-mode."""
    from ..config import attack_config
    from ..evaluate import attack_eval

    cfg = attack_config(**values)
    for run in runs():
        with progress_bar() as bar:
            update = lazy_task(bar, f"attack {run['id']}")

            def show(done, total, method, eps, update=update):
                update(completed=done, total=total, info=f"{method} eps {eps:g}")

            res = attack_eval(run, cfg, save_examples=save_examples, force=force, on_progress=show)
        print_attack(run, res)


@app.command()
@handle_errors
@flags(ExplainConfig, select=True)
def explain(
    run_ids: RunIds = None,
    out: Annotated[Path, typer.Option("--out", help="the PNG to write; the raw maps go next to it "
                                                    "(.safetensors)")] = Path("explain.png"),
    *, values, runs,
):
    """Saliency maps of runs side by side: one row per sample, one column per (run, method)."""
    from ..config import build
    from ..report import explain as explain_maps

    cfg = build(ExplainConfig, **values)
    selected = runs()
    with err_console.status(f"saliency of {len(selected)} run(s) x {len(cfg.methods)} method(s)"):
        res = explain_maps(selected, cfg, out=out)
    w, h = res["size"]
    html = f", the page {res['html']}" if res.get("html") else ""
    say(f"wrote {res['png']} ({w}x{h} px){html} and the raw maps {res['maps']}")

"""One cell of a sweep: it trains (or resumes, or finds its run trained), then runs each of its
evaluations (or finds them cached), while holding the cell's lock, so that many sweeps can share
one runs dir. `dry_row` says what running it would do."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import LockHeld
from ..evaluate import EVALUATIONS, evaluate, read
from ..locks import held
from ..report import draw_entry
from ..store import CKPT, RUN, find_run, lock_held, read_run
from ..train import train_run
from .experiments import Cell


def _stage(kind: str, run: dict, cfg, on_progress) -> dict:
    """One evaluation of a cell; explain's maps are also drawn beside its entry, for browsing."""
    res = evaluate(EVALUATIONS[kind], run, cfg, on_progress=on_progress)
    if kind == "explain":
        draw_entry(res)
    return res


def _train_state(run_dir: Path) -> str:
    """'completed', 'running' (another process holds its lock), 'partial' (a checkpoint to
    resume from) or 'new'."""
    try:
        status = json.loads((run_dir / RUN).read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        status = None
    if status == "completed":
        return "completed"
    if status == "running" and lock_held(run_dir):
        return "running"
    return "partial" if (run_dir / CKPT).is_file() else "new"


def _row(cell: Cell) -> dict:
    c = cell.cfg
    return {"experiment": cell.experiment, "run": cell.run_id, "dataset": c.dataset, "trainer": c.trainer,
            "mask_frac": c.mask_frac if c.trainer != "standard" else None, "seed": c.seed,
            "train": None, "test_acc": None, **dict.fromkeys(EVALUATIONS)}


def _inner(emit, stage: str):
    """Adapt a step's own on_progress(**info) to the sweep's: (completed, total, info)."""

    def show(**kw):
        if stage == "train":
            emit(event="inner", completed=(kw["epoch"] - 1) * kw["steps"] + kw["step"],
                 total=kw["epochs"] * kw["steps"], info=f"epoch {kw['epoch']}/{kw['epochs']} loss {kw['loss']:.4f}")
        else:
            done, total = kw.get("done", kw.get("completed")), kw.get("total")
            emit(event="inner", completed=done, total=total,
                 info=" ".join(f"{k} {v}" for k, v in kw.items() if k not in ("done", "completed", "total")))

    return show


WAIT_POLL = 2.0  # seconds between looks at cells that other processes hold


def _cell_lock(root: Path, cell: Cell) -> Path:
    """The lock a sweep holds while it works on a cell (train and evaluations): a hidden file in
    the runs dir, so that a run dir is never created before its training starts."""
    d = root / ".locks"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{cell.run_id}.lock"


def run_cell(cell: Cell, root: Path, emit=lambda **kw: None, step: int = 0, steps: int = 0, i: int = 1,
             n: int = 1) -> dict:
    """One cell: train (or resume, or find it trained), then each evaluation (or find it cached).
    Raises Busy when another process holds the cell or its run."""
    t0 = time.time()
    row = _row(cell)
    try:
        with held(_cell_lock(root, cell), f"cell {cell.run_id}"):
            emit(event="stage", step=step + 1, steps=steps, cell=i, cells=n, experiment=cell.experiment,
                 run=cell.run_id, stage="train")
            before = _train_state(root / cell.run_id)
            if before == "running":
                raise Busy(cell.run_id)
            res = train_run(cell.cfg, on_progress=_inner(emit, "train"))
            row["train"] = "cached" if res["already"] else "resumed" if before == "partial" else "trained"
            row["test_acc"] = res["test_acc"]
            run = find_run(root, cell.run_id)
            for j, (kind, ecfg) in enumerate(cell.evals.items(), 2):
                emit(event="stage", step=step + j, steps=steps, cell=i, cells=n, experiment=cell.experiment,
                     run=cell.run_id, stage=kind)
                out = _stage(kind, run, ecfg, _inner(emit, kind))
                row[kind] = "cached" if out["cached"] else "done"
    except LockHeld:  # the cell lock, or a plain `sgtool train` of its run
        raise Busy(cell.run_id) from None
    row["seconds"] = round(time.time() - t0, 1)
    return row


class Busy(Exception):
    """Another process holds this cell right now."""


def dry_row(root: Path, cell: Cell) -> dict:
    """What running the cell would do, read from the store through the evaluations' own cache
    check: an entry that is not whole counts as to do."""
    state = _train_state(root / cell.run_id)
    row = {**_row(cell), "train": {"completed": "cached", "running": "running elsewhere", "partial": "resume",
                                   "new": "todo"}[state]}
    run = read_run(root / cell.run_id) if state == "completed" else None
    for kind, ecfg in cell.evals.items():
        row[kind] = "cached" if run is not None and read(EVALUATIONS[kind], run, ecfg) is not None else "todo"
    return row

"""`sgtool sweep`: every cell of the chosen experiments, inline or as cluster jobs; a cell another
process holds is passed over and looked at again at the end."""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import UsageError, unknown_name
from ..store import runs_root
from .cells import WAIT_POLL, Busy, _row, dry_row, run_cell
from .cluster import submit
from .experiments import plan

EXECUTORS = ("inline", "local", "slurm")


def parse_shard(shard: str | None) -> tuple[int, int] | None:
    """'i/N' -> (i, N): this process takes the cells i, i + N, i + 2N, ... of the plan."""
    if shard is None:
        return None
    i, sep, n = str(shard).partition("/")
    try:
        i, n = int(i), int(n)
    except ValueError:
        raise UsageError(f"--shard must be i/N, such as 0/4, got '{shard}'") from None
    if not sep or n < 1 or not 0 <= i < n:
        raise UsageError(f"--shard i/N needs 0 <= i < N, got '{shard}'")
    return i, n


def run_sweep(path: str | Path, only: str | list[str] | None = None, dry_run: bool = False,
              runs_dir: str | None = None, data_dir: str | None = None, device: str | None = None,
              on_progress=None, executor: str = "inline", jobs: int | None = None, gpus_per_job: int = 0,
              slurm_partition: str | None = None, slurm_time: int | None = None, shard: str | None = None,
              wait: bool = True) -> list[dict]:
    """Run (or, with dry_run, only list) every cell of the chosen experiments.

    Returns one summary row per cell: experiment, run, dataset, trainer, mask_frac, seed,
    then train (trained | resumed | cached | running elsewhere; dry run: todo | resume | cached |
    running elsewhere), test_acc, a status per evaluation kind (done | cached; dry run: todo |
    cached; None where the experiment does not ask for it) and seconds. on_progress(event=...)
    is called with event "plan" (cells, steps), "stage" (step, steps, cell, cells, experiment,
    run, stage), "inner" (completed, total, info) and "cell" (row).

    Many sweeps may share one runs dir: a cell another process holds is passed over, and looked
    at again at the end (waited for, or with wait=False reported as "running elsewhere").
    shard "i/N" takes every N-th cell from the i-th. executor "local" or "slurm" runs each cell
    as a submitit job, at most `jobs` at a time.
    """
    if executor not in EXECUTORS:
        raise unknown_name("executor", executor, EXECUTORS)
    cells = plan(path, only, runs_dir, data_dir, device)
    sh = parse_shard(shard)
    if sh is not None:
        cells = cells[sh[0]:: sh[1]]
    root = runs_root(runs_dir)
    if dry_run:
        return [dry_row(root, c) for c in cells]
    emit = on_progress or (lambda **kw: None)
    steps = sum(1 + len(c.evals) for c in cells)
    emit(event="plan", cells=len(cells), steps=steps)
    if executor != "inline":
        return submit(cells, root, emit, executor, jobs, gpus_per_job, slurm_partition, slurm_time,
                       dict(path=str(path), only=only, runs_dir=runs_dir, data_dir=data_dir, device=device))
    rows: dict[int, dict] = {}
    pending = list(range(len(cells)))
    step = 0
    while pending:
        busy = []
        for i in pending:
            cell = cells[i]
            try:
                rows[i] = run_cell(cell, root, emit, step, steps, i + 1, len(cells))
            except Busy:
                busy.append(i)
                continue
            step += 1 + len(cell.evals)
            emit(event="cell", row=rows[i])
        if busy and not wait:
            for i in busy:
                rows[i] = {**_row(cells[i]), "train": "running elsewhere"}
            break
        if busy:
            emit(event="wait", cells=len(busy))
            time.sleep(WAIT_POLL)
        pending = busy
    return [rows[i] for i in range(len(cells))]



"""A sweep's cells as submitit jobs: local processes, or a SLURM job array (sgtool[cluster])."""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import SgtoolError
from ..store import runs_root
from .cells import WAIT_POLL, Busy, run_cell
from .experiments import plan


class CellJob:
    """A submitit job: one cell, found again in the worker by its run id from the same
    experiments file. Checkpointable: a preempted job is requeued with the same arguments, and
    the store resumes the run from its last finished epoch."""

    def __init__(self, **plan_args):
        self.plan_args = plan_args

    def __call__(self, run_id: str) -> dict:
        a = self.plan_args
        (cell,) = [c for c in plan(a["path"], a["only"], a["runs_dir"], a["data_dir"], a["device"])
                   if c.run_id == run_id]
        root = runs_root(a["runs_dir"])
        while True:
            try:
                return run_cell(cell, root)
            except Busy:  # another process has it: wait for it, then find it done
                time.sleep(WAIT_POLL)

    def checkpoint(self, run_id: str):
        import submitit

        return submitit.helpers.DelayedSubmission(self, run_id)


def submit(cells, root: Path, emit, executor: str, jobs, gpus_per_job, partition, time_min, plan_args) -> list[dict]:
    """Each cell as a submitit job (local processes, or a SLURM array), at most `jobs` running."""
    try:
        import submitit
    except ImportError:
        raise SgtoolError("--executor local/slurm needs submitit: pip install 'sgtool[cluster]'") from None
    folder = root / ".submitit"
    folder.mkdir(parents=True, exist_ok=True)
    ex = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=executor)
    params = dict(timeout_min=time_min or 24 * 60, name="sgtool-sweep")
    if executor == "slurm":
        params.update(slurm_array_parallelism=jobs or len(cells), gpus_per_node=gpus_per_job or 0)
        if partition:
            params["slurm_partition"] = partition
    elif gpus_per_job:
        params["visible_gpus"] = list(range(gpus_per_job))
    ex.update_parameters(**params)
    limit = len(cells) if executor == "slurm" else max(1, jobs or 1)
    job_fn = CellJob(**plan_args)
    running, rows, queue, done_steps = {}, {}, list(range(len(cells))), 0
    while queue or running:
        while queue and len(running) < limit:
            i = queue.pop(0)
            running[i] = ex.submit(job_fn, cells[i].run_id)
            emit(event="stage", step=done_steps + 1, steps=sum(1 + len(c.evals) for c in cells), cell=i + 1,
                 cells=len(cells), experiment=cells[i].experiment, run=cells[i].run_id, stage=f"job {running[i].job_id}")
        for i, job in list(running.items()):
            if job.done():
                del running[i]
                try:
                    rows[i] = job.result()
                except Exception as e:  # noqa: BLE001 - a failed job: its error, in one line
                    last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                    raise SgtoolError(f"the job of cell {cells[i].run_id} failed ({last}); its logs are in "
                                      f"{folder / str(job.job_id)}") from None
                done_steps += 1 + len(cells[i].evals)
                emit(event="cell", row=rows[i])
        time.sleep(0.5)
    return [rows[i] for i in range(len(cells))]



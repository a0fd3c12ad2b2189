"""experiments.yaml and `sgtool sweep`: the papers' experiments as one resumable command.

    experiments.py   the file read and checked; the cells it plans
    cells.py         one cell trained and evaluated, cached and locked; the dry run's row
    cluster.py       cells as submitit jobs (local processes or SLURM)
    run.py           run_sweep: every cell, inline or as jobs
"""

from .cells import Busy, run_cell
from .experiments import Cell, load_experiments, plan
from .run import parse_shard, run_sweep

__all__ = ["Cell", "load_experiments", "plan", "Busy", "parse_shard", "run_cell", "run_sweep"]

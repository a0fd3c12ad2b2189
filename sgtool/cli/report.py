"""`sgtool report` (tables and plots of the whole store) and `sgtool sweep` (experiments.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import SgtoolError
from .app import app, handle_errors
from .options import DataDir, Device, RunsDir
from .render import plain, print_frame, print_rows, progress_bar, say, warn


@app.command()
@handle_errors
def report(
    runs_dir: RunsDir = None,
    format: Annotated[str, typer.Option("--format", help="table | md | csv | latex | html")] = "table",
    out: Annotated[Path | None, typer.Option("--out", help="directory for the report files and plots "
                                                           "(default: html: ./reports)")] = None,
    where: Annotated[list[str] | None, typer.Option("--where", help="key=value on the training config, "
                                                                    "repeatable")] = None,
):
    """Tables and plots of every run and its evaluations; seeds grouped as mean ± std (n)."""
    from ..report import collect, write_report
    from ..store import runs_root

    rep = collect(runs_root(runs_dir), where)
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
        say(f"report: {res['report']}")
    elif res["files"]:
        say(f"wrote {len(res['files'])} files to {res['files'][0].parent}")


@app.command()
@handle_errors
def sweep(
    path: Annotated[str, typer.Argument(metavar="EXPERIMENTS.yaml", help="the experiments file")],
    only: Annotated[str | None, typer.Option("--only", help="run only these experiments, comma-separated")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list the cells and what is cached; run nothing")] = False,
    executor: Annotated[str, typer.Option("--executor", help="inline (this process) | local (submitit jobs on this "
                                                             "machine) | slurm (a SLURM job array); local and slurm "
                                                             "need sgtool[cluster]")] = "inline",
    jobs: Annotated[int | None, typer.Option("--jobs", help="local / slurm: at most N jobs at a time (default: local 1, "
                                                            "slurm all)")] = None,
    gpus_per_job: Annotated[int, typer.Option("--gpus-per-job", help="local / slurm: GPUs per job")] = 0,
    slurm_partition: Annotated[str | None, typer.Option("--slurm-partition", help="slurm: the partition")] = None,
    slurm_time: Annotated[int | None, typer.Option("--slurm-time", help="local / slurm: minutes per job before it is "
                                                                        "stopped (and, on SLURM, requeued to resume) "
                                                                        "(default: 1440)")] = None,
    shard: Annotated[str | None, typer.Option("--shard", help="i/N: take every N-th cell from the i-th (N plain "
                                                              "processes split one sweep)")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="at the end, wait for cells other processes are "
                                                                "running (default: wait)")] = True,
    runs_dir: RunsDir = None, data_dir: DataDir = None, device: Device = None,
):
    """Run experiments: every cell of each grid through train -> mask-eval -> attack -> explain, cached and resumable; many sweeps may share one runs dir."""
    from ..store import runs_root
    from ..sweep import parse_shard, plan, run_sweep

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
                bar.update(overall, **plain(dict(completed=e["step"] - 1, info=f"{e['stage'].replace('_', '-')} {e['run']}",
                                                 description=f"{e['experiment']} {e['cell']}/{e['cells']}")))
                bar.reset(stage, total=None, description=f"  {e['stage'].replace('_', '-')}", info="", visible=True)
            elif event == "inner":
                bar.update(stage, **plain(dict(completed=e["completed"], total=e["total"], info=e["info"])))
            elif event == "wait":
                bar.update(overall, info=f"waiting for {e['cells']} cell(s) other processes run")

        rows = run_sweep(path, on_progress=show, executor=executor, jobs=jobs, gpus_per_job=gpus_per_job,
                         slurm_partition=slurm_partition, slurm_time=slurm_time, wait=wait, **kw)
        bar.update(overall, completed=bar.tasks[overall].total, info="done")
        bar.update(stage, visible=False)
    print_rows(rows, f"sweep: {len(rows)} cells")
    say(f"tables and plots: sgtool report --runs-dir {runs_root(runs_dir)} --format html")

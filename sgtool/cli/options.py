"""The commands' flags, read from the config declarations (config.options): a command names the
config class whose options it takes, and `flags` gives it one Typer option per field that is
offered on the command line, with its flag, type, help (default stated) and environment
variable. Nothing here repeats a default or a help text.

    @app.command()
    @handle_errors
    @flags(MaskEvalConfig, select=True)
    def mask_eval(run_ids=None, force=False, *, values, runs): ...

`values` holds the given options (the others are not set: their defaults apply when the config is
built); with select=True the command also takes the training flags by which it finds its run, and
`runs(runs_dir)` returns the runs selected by ids or by those flags.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Annotated

import typer
from rich.markup import escape

from ..config import TrainConfig
from ..config.options import flag_of, help_of, meta, types_of

# An evaluation command has a batch size and a seed of its own: the training flags by which it
# finds a run name those two --train-batch-size and --train-seed.
SELECT_RENAME = {"batch_size": "train_batch_size", "seed": "train_seed"}


def option(cls, f: dataclasses.Field, name: str | None = None, help: str | None = None) -> inspect.Parameter:
    """A keyword parameter of a Typer command for field f of cls (not given: None)."""
    t, is_list = types_of(cls)[f.name]
    decl = meta(f, "flag") or flag_of(f)
    if name is not None:
        decl = f"--{name.replace('_', '-')}"
    opt = typer.Option(decl, help=escape(help or help_of(f)), envvar=meta(f, "envvar"), show_default=False)
    ann = Annotated[(str if is_list else t) | None, opt]
    return inspect.Parameter(name or f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ann)


def cli_fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if meta(f, "cli")]


def select_params() -> dict[str, tuple[str, inspect.Parameter]]:
    """param name -> (training field, parameter) for the training flags that select a run."""
    out = {}
    for f in cli_fields(TrainConfig):
        if not meta(f, "select"):
            continue
        name = SELECT_RENAME.get(f.name)
        helptext = f"select the run trained with this --{f.name.replace('_', '-')}" if name else None
        out[name or f.name] = (f.name, option(TrainConfig, f, name, helptext))
    return out


def _field(cls, name: str) -> dataclasses.Field:
    return {f.name: f for f in dataclasses.fields(cls)}[name]


# Options that commands without a config class take, as their declarations give them.
RunsDir = option(TrainConfig, _field(TrainConfig, "runs_dir")).annotation
DataDir = option(TrainConfig, _field(TrainConfig, "data_dir")).annotation
Device = option(TrainConfig, _field(TrainConfig, "device")).annotation
ConfigFile = Annotated[str | None, typer.Option("--config", help="YAML file with the training flags' keys; flags win",
                                                show_default=False)]


def flags(cls, select: bool = False):
    """Add cls's command-line options to a command: it gets `values`, the options given. With
    select, also the training flags that select a run, --config and --runs-dir: it gets `runs()`,
    the runs named by the RUN arguments or by those flags."""

    def deco(fn):
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name not in ("values", "runs")]
        mine = {f.name: option(cls, f) for f in cli_fields(cls)}
        chosen = select_params() if select else {}
        extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=a)
                 for n, a in (("config", ConfigFile), ("runs_dir", RunsDir))] if select else []

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            values = {k: v for k in mine if (v := kwargs.pop(k)) is not None}
            if select:
                from ..runs import select_runs
                from ..store import runs_root

                picked = {field: v for name, (field, _) in chosen.items() if (v := kwargs.pop(name)) is not None}
                config, run_ids, root = kwargs.pop("config"), kwargs.pop("run_ids"), runs_root(kwargs.pop("runs_dir"))
                kwargs["runs"] = lambda: select_runs(root, run_ids, picked, config)
            return fn(*args, values=values, **kwargs)

        params = [*own, *mine.values(), *(p for _, p in chosen.values()), *extra]
        wrapper.__signature__ = sig.replace(parameters=_ordered(params))
        wrapper.__annotations__ = {p.name: p.annotation for p in wrapper.__signature__.parameters.values()}
        return wrapper

    return deco


def _ordered(params: list[inspect.Parameter]) -> list[inspect.Parameter]:
    """Positional parameters first, as Python requires; the rest in the given order."""
    pos = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    kw = [p.replace(kind=p.KEYWORD_ONLY) for p in params if p not in pos]
    return pos + kw

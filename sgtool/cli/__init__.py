"""The `sgtool` command line. Each command builds a config, calls one backend function and
renders the result with rich:

    app.py       the Typer app, the one-line errors, `main`
    options.py   the flags, read from the config declarations
    render.py    tables and progress bars that read whole at 80 columns
    train.py     train, runs, unlock, datasets
    evaluate.py  mask-eval, attack, explain
    report.py    report, sweep

Backends (everything outside this package) never import typer or rich.
"""

# Each module adds its commands to the app, in the order `sgtool --help` lists them.
from . import train  # noqa: F401

# isort: split
from . import evaluate  # noqa: F401

# isort: split
from . import report  # noqa: F401
from .app import app, main

__all__ = ["app", "main"]

"""The Typer app, and what every command shares: one line and an exit code for each error a user
can cause (an SgtoolError: 2 for bad usage, 1 for runtime trouble), a clean exit on Ctrl-C or
SIGTERM, and `main`, the `sgtool` command."""

from __future__ import annotations

import functools
import signal
from typing import Annotated

import typer
from rich.markup import escape

from ..errors import SgtoolError
from .render import err_console, one_line

try:  # recent typer vendors click; older releases depend on it
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Saliency guided training (SGT, ASGT) and the evaluations that measure it.")


def error(message: str) -> None:
    err_console.print(f"[red]error:[/red] {escape(one_line(message))}", highlight=False, soft_wrap=True)


def _version(value: bool):
    if value:
        from .. import __version__

        typer.echo(f"sgtool {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="print sgtool's version and exit")] = False):
    """Saliency guided training (SGT, ASGT) and the evaluations that measure it."""


def handle_errors(fn):
    """One line and an exit code for every SgtoolError; a clean exit 130 on Ctrl-C."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SgtoolError as e:
            error(str(e))
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted", highlight=False)
            raise typer.Exit(130) from None

    return wrapper


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def main():
    from ..process import tune_process

    tune_process()  # before torch loads: passive OpenMP waiting, glibc malloc thresholds
    # `kill` (SIGTERM) is treated like Ctrl-C: the run is saved and marked interrupted.
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        code = app(prog_name="sgtool", standalone_mode=False)
    except ClickException as e:
        # Typer/click's own parse errors (a non-numeric --epochs, an unknown flag) as one line.
        ctx = getattr(e, "ctx", None)
        cmd = ctx.command_path if ctx else "sgtool"
        error(f"{e.format_message()} (see `{cmd} --help`)")
        return e.exit_code
    except typer.Abort:
        err_console.print("interrupted", highlight=False)
        return 130
    return code if isinstance(code, int) else 0

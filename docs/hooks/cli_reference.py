"""MkDocs hook: the CLI reference page, built in memory from the Typer app at every build.

The page is never written by hand, so it cannot drift from the code: each command's help text,
usage line, arguments and options come from walking the click command tree that
`typer.main.get_command(sgtool.cli.app)` returns. Only `sgtool.cli` is imported from sgtool,
because the rest of the package may be laid out differently from one release to the next while
the app and its command names stay.

The walk uses only the parts of click's API that both the click package and the copy recent
typer releases vendor (`typer._click`) provide, and asks for the rest (a parameter's type name)
in whichever form the installed one offers.
"""

from __future__ import annotations

import html
import re
import sys
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
PAGE = "reference/cli.md"
PROG = "sgtool"


def _app_command():
    """The root click command of `sgtool.cli:app`, imported from this checkout, not from
    whatever sgtool another environment has installed."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import typer.main

    from sgtool.cli import app

    return typer.main.get_command(app)


def _context(cmd, name: str, parent=None):
    # Command.context_class is Context in click and in typer's vendored copy alike.
    return cmd.context_class(cmd, info_name=name, parent=parent)


def _subcommands(cmd, ctx) -> list[tuple[str, object]]:
    if not hasattr(cmd, "commands"):
        return []
    names = cmd.list_commands(ctx) if hasattr(cmd, "list_commands") else list(cmd.commands)
    found = [(n, cmd.get_command(ctx, n) if hasattr(cmd, "get_command") else cmd.commands[n]) for n in names]
    return [(n, c) for n, c in found if c is not None and not getattr(c, "hidden", False)]


def _plain(text: str | None) -> str:
    """Help text as the terminal shows it: rich's escaped brackets (`\\[`) become brackets, and
    the paragraphs' hard line breaks become spaces."""
    if not text:
        return ""
    text = text.replace("\\[", "[").replace("\b", "")
    return "\n\n".join(" ".join(p.split()) for p in re.split(r"\n\s*\n", text.strip()))


def _inline(text: str) -> str:
    """Markdown for running text in a table cell: code spans kept, everything else escaped, so that
    `<pad>`, `|`, `*` or `[...]` in a help string are shown, not interpreted."""
    out = []
    for i, part in enumerate(re.split(r"(`[^`]*`)", text)):
        if i % 2:
            out.append(part.replace("|", "\\|"))
        else:
            part = html.escape(part, quote=False)
            out.append(re.sub(r"([\\`*_\[\]|#])", r"\\\1", part))
    return "".join(out)


def _code(text: str) -> str:
    """A code span in a table cell (pipes escaped, as the tables extension expects)."""
    text = str(text)
    fence = "``" if "`" in text else "`"
    return f"{fence}{text.replace('|', chr(92) + '|')}{fence}"


def _type_name(param, ctx) -> str:
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return "flag"
    typ = getattr(param, "type", None)
    if typ is not None and getattr(typ, "name", None):  # click
        return str(typ.name)
    display = getattr(param, "display_type", None)  # typer's vendored click
    if callable(display):
        try:
            return str(display(ctx)).strip("<>")
        except TypeError:
            return ""
    return ""


def _default(param) -> str:
    default = param.default
    if callable(default):
        return "(computed)"
    if getattr(param, "is_flag", False):
        if param.secondary_opts:
            if default is None:
                return ""
            return _code(param.opts[0] if default else param.secondary_opts[0])
        return "off" if not default else "on"
    if default is None or default == () or default == []:
        return ""
    if isinstance(default, (list, tuple)):
        return _code(",".join(map(str, default)))
    return _code(default)


def _option_row(param, ctx) -> str:
    flags = " / ".join(_code(o) for o in [*param.opts, *param.secondary_opts])
    help_text = _inline(_plain(getattr(param, "help", None)))
    envvar = getattr(param, "envvar", None)
    if envvar:
        names = envvar if isinstance(envvar, (list, tuple)) else [envvar]
        help_text += (" " if help_text else "") + "Env: " + ", ".join(_code(e) for e in names) + "."
    if getattr(param, "required", False):
        help_text = "**Required.** " + help_text
    return f"| {flags} | {_type_name(param, ctx)} | {_default(param)} | {help_text} |"


def _argument_item(param) -> str:
    name = getattr(param, "metavar", None) or param.name.upper()
    help_text = _inline(_plain(getattr(param, "help", None)))
    need = "required" if getattr(param, "required", False) else "optional"
    return f"- {_code(name)} ({need}){': ' + help_text if help_text else ''}"


def _usage(cmd, ctx) -> str:
    usage = cmd.get_usage(ctx).strip()
    return usage[len("Usage:"):].strip() if usage.startswith("Usage:") else usage


def _command_section(path: str, cmd, ctx, level: int) -> list[str]:
    lines = [f"{'#' * level} `{path}`", ""]
    help_text = _plain(cmd.help)
    if help_text:
        lines += [_inline(p) for p in help_text.split("\n\n")]
        lines.append("")
    lines += ["```text", _usage(cmd, ctx), "```", ""]
    params = [p for p in cmd.get_params(ctx) if not getattr(p, "hidden", False)]
    arguments = [p for p in params if getattr(p, "param_type_name", "") == "argument"]
    options = [p for p in params if getattr(p, "param_type_name", "") == "option"]
    if arguments:
        lines += ["**Arguments**", ""] + [_argument_item(p) for p in arguments] + [""]
    if options:
        lines += ["**Options**", "", "| option | type | default | help |", "|---|---|---|---|"]
        lines += [_option_row(p, ctx) for p in options]
        lines.append("")
    return lines


def render() -> str:
    root = _app_command()
    root_ctx = _context(root, PROG)
    lines = [
        "# CLI reference",
        "",
        "This page is generated from the Typer app (`sgtool.cli:app`) each time the site is built,",
        "so it shows exactly the commands and options of the code it was built from.",
        "`sgtool COMMAND --help` prints the same in the terminal.",
        "",
        "An empty default is resolved at run time, often per dataset: the help text gives it, as",
        "`(default: ...)` or in square brackets at its end.",
        "",
    ]
    commands = _subcommands(root, root_ctx)
    if commands:
        lines += ["| command | what it does |", "|---|---|"]
        for name, cmd in commands:
            summary = _plain(cmd.get_short_help_str(limit=300)) if hasattr(cmd, "get_short_help_str") else ""
            anchor = f"{PROG}-{name}".lower()
            lines.append(f"| [`{PROG} {name}`](#{anchor}) | {_inline(summary)} |")
        lines.append("")
    lines += _command_section(PROG, root, root_ctx, 2)

    def walk(cmd, ctx, path, level):
        for name, sub in _subcommands(cmd, ctx):
            sub_ctx = _context(sub, name, ctx)
            lines.extend(_command_section(f"{path} {name}", sub, sub_ctx, level))
            walk(sub, sub_ctx, f"{path} {name}", level + 1)

    walk(root, root_ctx, PROG, 2)
    return "\n".join(lines) + "\n"


def on_files(files, config):
    files.append(File.generated(config, PAGE, content=render()))
    return files

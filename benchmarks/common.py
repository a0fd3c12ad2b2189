"""What the benchmark scripts print through: their figures as text on stdout, laid out exactly as
each script lays them out, and with --markdown PATH the same figures as a page for the docs site.

    out = Output()                                   # prints the machine line first
    out.line(f"MNIST mnist-cnn, batch {bs}")         # a paragraph on the page
    steps = out.table(("mode", "s/step"), fmt="{:<14} {:>8}")
    steps.row("standard", f"{seconds:.3f}")          # cells are the script's own strings
    out.write(args.markdown, "Seconds per training step")

Cells and lines are strings the script has formatted, so a page shows every number exactly as the
terminal does. The page is only what this run printed through its Output, written in one piece
at the end, so it never mixes in figures of an earlier run.

Nothing here imports torch at load time: the scripts tune the process (OMP_WAIT_POLICY, malloc)
before torch loads, and `machine()` imports it when it is called.
"""

from __future__ import annotations

import platform
import re
import shlex
import string
import sys
from datetime import datetime, timezone
from pathlib import Path


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine() -> str:
    """The line that says where the figures were made: the CPU, the instruction set torch's
    kernels dispatch to, torch's threads, torch's version, and the GPUs when CUDA has any.
    Figures from different machines are only comparable with this beside them."""
    import torch

    parts = [cpu_model(), torch.backends.cpu.get_cpu_capability(), f"{torch.get_num_threads()} threads",
             f"torch {torch.__version__}"]
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        parts.append(f"GPU {torch.cuda.get_device_name(0)}" + (f" (x{n})" if n > 1 else ""))
    return "machine: " + ", ".join(parts)


def command(argv: list[str] | None = None) -> str:
    """The command line as typed from the repository root, whatever path the script was run by."""
    argv = sys.argv if argv is None else argv
    return "python " + shlex.join([f"benchmarks/{Path(argv[0]).name}", *argv[1:]])


def add_markdown_argument(parser) -> None:
    parser.add_argument("--markdown", metavar="PATH", default=None,
                        help="also write the figures as a Markdown page there (docs/results/NAME.md)")


# Characters that would start code, emphasis, a link, a table cell or an attribute list. An
# underscore inside a word is literal in both Python-Markdown and CommonMark, so names such as
# auc_vs_random stay readable in the page's source.
_INLINE = re.compile(r"([\\`*\[\]{}|])")
_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
_TAG = re.compile(r"<(?=[A-Za-z/!?])")  # `\<` is no escape in Python-Markdown; an entity is
# At the start of a paragraph these make a heading, a quote or a list.
_BLOCK = re.compile(r"[#>]|[-+] ")


def escape(text: str) -> str:
    """Text that Markdown renders as itself."""
    return _TAG.sub("&lt;", _UNDERSCORE.sub(r"\\_", _INLINE.sub(r"\\\1", text)))


def _paragraph(text: str) -> str:
    text = escape(text)
    # "2. results" would be a list, and Python-Markdown numbers every list from 1.
    if m := re.match(r"\d+\.", text):
        return text[: m.end() - 1] + "\\" + text[m.end() - 1 :]
    return "\\" + text if _BLOCK.match(text) else text


def _code(text: str) -> str:
    ticks = "`" * (max((len(r) for r in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _alignments(fmt: str) -> list[str]:
    """'l', 'r' or 'c' per replacement field of a str.format template, from its align character
    (left when it has none: the cells are strings)."""
    out = []
    for _, field, spec, _ in string.Formatter().parse(fmt):
        if field is None:
            continue
        m = re.match(r"(.?)([<>^=])", spec or "")
        a = m.group(2) if m else "<"
        out.append({"<": "l", ">": "r", "=": "r", "^": "c"}[a])
    return out


class Table:
    """Rows printed as they come (a long benchmark shows each when it is done), kept for the page."""

    def __init__(self, headers, fmt: str, align: str | None, show_headers: bool):
        self.headers = [str(h) for h in headers]
        self.fmt = fmt
        self.align = list(align) if align else _alignments(fmt)
        self.rows: list[list[str]] = []
        if show_headers:
            print(fmt.format(*self.headers).rstrip(), flush=True)

    def row(self, *cells, fmt: str | None = None, page=None) -> None:
        """Print the cells through `fmt` (the table's own by default) and keep them for the page:
        stripped of the padding a script may put into a cell to keep its text layout, or `page`'s
        cells instead (those of a figure that this run did not measure, say)."""
        def padded(values):  # a short row has empty cells at its end
            values = [str(c) for c in values]
            if len(values) > len(self.headers):
                raise ValueError(f"{len(values)} cells for {len(self.headers)} columns: {values}")
            return values + [""] * (len(self.headers) - len(values))

        cells = padded(cells)
        print((fmt or self.fmt).format(*cells).rstrip(), flush=True)
        self.rows.append([c.strip() for c in (cells if page is None else padded(page))])

    def markdown(self) -> str:
        rule = {"l": ":---", "r": "---:", "c": ":---:"}
        align = (self.align + ["l"] * len(self.headers))[: len(self.headers)]
        lines = ["| " + " | ".join(escape(h.strip()) for h in self.headers) + " |",
                 "|" + "|".join(rule[a] for a in align) + "|"]
        lines += ["| " + " | ".join(escape(c) for c in r) + " |" for r in self.rows]
        return "\n".join(lines)


class Output:
    """A benchmark's output: printed as it comes, recorded for the Markdown page. Make it after
    setting torch's threads, as its first line is the machine line."""

    def __init__(self, argv: list[str] | None = None):
        self.command = command(argv)
        self.started = datetime.now(timezone.utc)
        self.blocks: list[str | Table] = []
        self.line(machine())

    def line(self, text: str = "", page: bool | str = True) -> None:
        """Print text; on the page it is a paragraph (its lines joined, the indentation gone),
        nothing when it is blank, `page` instead when that is a string, and nothing when False."""
        print(text, flush=True)
        kept = text if page is True else page or ""
        words = " ".join(part.strip() for part in kept.split("\n") if part.strip())
        if words:
            self.blocks.append(_paragraph(words))

    def note(self, text: str) -> None:
        """A paragraph on the page alone: what the page shows differently from the terminal."""
        self.blocks.append(_paragraph(text))

    def table(self, headers, rows=None, fmt: str | None = None, title: str | None = None,
              align: str | None = None, show_headers: bool = True) -> Table:
        """A table: `fmt` is a str.format template with a field per column, applied to the
        headers (unless not show_headers) and to each row, so that the text is exactly the
        script's layout; without it the columns are as wide as their cells, the first left-
        and the others right-aligned. The page's alignment follows fmt's, or `align` ('lrc'
        per column). More rows can follow with .row()."""
        rows = [[str(c) for c in r] for r in rows or []]
        if fmt is None:
            if not rows:
                raise ValueError("a table without fmt needs its rows to size its columns")
            widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
            fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
        if title is not None:
            self.line(title)
        t = Table(headers, fmt, align, show_headers)
        self.blocks.append(t)
        for r in rows:
            t.row(*r)
        return t

    def markdown(self, title: str) -> str:
        made = self.started.strftime("%Y-%m-%d %H:%M:%S UTC")
        parts = [f"# {title}", f"Made by {_code(self.command)} on {made}."]
        parts += [b.markdown() if isinstance(b, Table) else b for b in self.blocks
                  if not (isinstance(b, Table) and not b.rows)]
        return "\n\n".join(parts) + "\n"

    def write(self, path: str | Path | None, title: str) -> None:
        """Write the page to path (nothing when None), atomically: a reader never sees half a page."""
        if path is None:
            return
        from sgtool.store import atomic_write_text

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, self.markdown(title))

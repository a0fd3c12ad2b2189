"""Renderers: tables and plots -> markdown, LaTeX, CSV or one self-contained HTML page
(`write_report`); the terminal's rich tables are drawn by the CLI from the same strings.
"""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from ..errors import unknown_name
from ..store import atomic_write_bytes, atomic_write_text, check_dir, make_dir
from .collect import Report
from .plots import plots
from .tables import NOTES, TITLES, formatted, split_constant, tables

FORMATS = ("table", "md", "csv", "latex", "html")


def to_markdown(df: pd.DataFrame) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def to_latex(df: pd.DataFrame) -> str:
    tex = df.to_latex(index=False, escape=True)
    for u, t in (("±", r"$\pm$"), ("λ", r"$\lambda$"), ("ε", r"$\varepsilon$")):
        tex = tex.replace(u, t)
    return tex


HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { padding: 3px 8px; border-bottom: 1px solid #e4e4e4; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
.note { color: #555; font-size: 0.9em; max-width: 70em; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; border: 1px solid #eee; }
.warn { color: #8a5a00; font-size: 0.9em; }
"""


def to_html(rep: Report, tabs: dict[str, pd.DataFrame], figs: dict[str, list]) -> str:
    """One self-contained page: tables, and the plots embedded as base64 PNGs."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>sgtool report</title>"
             f"<style>{HTML_STYLE}</style></head><body>",
             "<h1>sgtool report</h1>",
             f"<p class='note'>{len(rep.runs)} runs in {len(rep.groups)} groups from "
             f"<code>{html.escape(str(rep.root))}</code>, {now}.</p>"]

    def images(section):
        for name, caption, png in figs.get(section, []):
            parts.append(f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,"
                         f"{base64.b64encode(png).decode()}'><figcaption>{html.escape(caption)}</figcaption></figure>")

    for name in dict.fromkeys([*TITLES, *figs]):  # every table in TITLES' order, with its plots
        if name == "saliency":
            continue
        if name in tabs:
            parts.append(f"<h2>{html.escape(TITLES[name])}</h2><p class='note'>{html.escape(NOTES[name])}</p>")
            df, caption = split_constant(formatted(tabs[name]))
            if caption:
                parts.append(f"<p class='note'>All rows: {html.escape(caption)}.</p>")
            parts.append(df.to_html(index=False, border=0, escape=True))
        images(name)
    if figs.get("saliency"):
        parts.append("<h2>Saliency maps</h2><p class='note'>One row per test sample; each column is one "
                     "model's saliency for one method, on one colour scale per column.</p>")
        images("saliency")
    if rep.warnings:
        parts.append("<h2>Warnings</h2><ul>" + "".join(f"<li class='warn'>{html.escape(w)}</li>" for w in rep.warnings)
                     + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(rep: Report, fmt: str = "table", out: str | Path | None = None) -> dict:
    """Render the report. Returns {"tables": {title: (DataFrame of strings, caption)} (for the
    terminal; columns equal in every row are moved into the caption),
    "text": what to print (md/csv/latex without --out), "files": [paths written]}.
    With `out` the plots are written there as PNG files too; html always writes (default
    ./reports/report.html), because a page with embedded plots is not for a terminal."""
    if fmt not in FORMATS:
        raise unknown_name("format", fmt, FORMATS)
    tabs = tables(rep)
    result = {"tables": {TITLES[k]: split_constant(formatted(v)) for k, v in tabs.items()}, "text": None,
              "files": []}
    if fmt == "html" and out is None:
        out = Path("reports")
    if out is not None:
        check_dir(out, "--out")
    figs = plots(rep) if out is not None else {}
    if out is not None:
        out = Path(out)
        make_dir(out, "--out")
        for items in figs.values():
            for name, _, png in items:
                atomic_write_bytes(out / name, png)
                result["files"].append(out / name)

    def sections(render, head, image=None):
        text = []
        for name, df in tabs.items():
            text += [head(TITLES[name]), NOTES[name], render(formatted(df))]
            text += [image(n, c) for n, c, _ in figs.get(name, [])] if image else []
        if image and figs.get("saliency"):
            text += [head("Saliency maps")] + [image(n, c) for n, c, _ in figs["saliency"]]
        return "\n\n".join(text) + "\n"

    if fmt == "md":
        text = "# sgtool report\n\n" + sections(to_markdown, lambda t: f"## {t}", lambda n, c: f"![{c}]({n})")
    elif fmt == "latex":
        text = sections(to_latex, lambda t: f"\\subsection*{{{t}}}", lambda n, c: f"% figure: {n} ({c})")
    elif fmt == "csv":
        if out is not None:
            for name, df in tabs.items():
                path = out / f"{name}.csv"
                atomic_write_text(path, df.to_csv(index=False))
                result["files"].append(path)
            return result
        text = "\n".join(f"# {name}\n{df.to_csv(index=False)}" for name, df in tabs.items())
    elif fmt == "html":
        text = to_html(rep, tabs, figs)
    else:
        return result
    if out is None:
        result["text"] = text
    else:
        path = out / {"md": "report.md", "latex": "report.tex", "html": "report.html"}[fmt]
        atomic_write_text(path, text)
        result["files"].append(path)
        result["report"] = path
    return result

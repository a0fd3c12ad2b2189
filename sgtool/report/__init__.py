"""Reports and saliency pictures from the run store:

    collect.py   every run and its evaluations -> tidy DataFrames (a Report)
    tables.py    grouped summary tables (mean, std, n over seeds) and their display strings
    plots.py     the papers' figures as PNG bytes
    maps.py      saliency maps drawn, one renderer per kind of input; `explain` for the CLI
    render.py    markdown, LaTeX, CSV and one self-contained HTML page (write_report)
    figure.py    what every figure shares
"""

from .collect import Report, collect, effective_config, parse_where
from .maps import draw_entry, explain, render_maps, render_tokens_html
from .plots import plots
from .render import FORMATS, to_html, to_latex, to_markdown, write_report
from .tables import NOTES, TITLES, formatted, split_constant, tables

__all__ = ["Report", "collect", "effective_config", "parse_where", "explain", "draw_entry", "render_maps",
           "render_tokens_html", "plots", "FORMATS", "to_html", "to_latex", "to_markdown", "write_report", "NOTES",
           "TITLES", "formatted", "split_constant", "tables"]

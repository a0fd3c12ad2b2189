"""Reports and saliency pictures from the run store:

    collect.py   every run and its evaluations -> tidy DataFrames (a Report)
    tables.py    grouped summary tables (mean, std, n over seeds) and their display strings
    plots.py     the papers' figures as PNG bytes
    render.py    markdown, LaTeX, CSV and one self-contained HTML page (write_report)
    explain.py   saliency maps side by side, one renderer per kind of input
"""

from .collect import Report, collect, effective_config, parse_where
from .explain import ExplainConfig, compute_maps, explain, explain_run, read_maps, render_maps, save_maps
from .plots import plots
from .render import FORMATS, to_html, to_latex, to_markdown, write_report
from .tables import NOTES, TITLES, formatted, split_constant, tables

__all__ = ["Report", "collect", "effective_config", "parse_where", "ExplainConfig", "compute_maps", "explain",
           "explain_run", "read_maps", "render_maps", "save_maps", "plots", "FORMATS", "to_html", "to_latex",
           "to_markdown", "write_report", "NOTES", "TITLES", "formatted", "split_constant", "tables"]

"""What every figure of a report shares: matplotlib's object API (Figure and the Agg canvas,
never pyplot: no global state and no display), its resolution, and PNG bytes out."""

from __future__ import annotations

import io
import math

DPI = 100


def figure(nplots: int, ncols: int = 3, w: float = 4.2, h: float = 3.2):
    from matplotlib.figure import Figure

    ncols = min(ncols, nplots)
    nrows = math.ceil(nplots / ncols)
    fig = Figure(figsize=(w * ncols, h * nrows + 0.8), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[nplots:]:
        ax.set_visible(False)
    return fig, axes[:nplots]


def png_bytes(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()

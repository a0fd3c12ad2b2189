"""Saliency maps drawn: one renderer per kind of input (RENDERERS), each giving PNG bytes of a
grid with one row per sample and one column per (run, method); text also as an HTML page. The
maps come from evaluate.explain. `explain` is what `sgtool explain` runs: the maps of several
runs side by side, written as a PNG with the raw maps beside it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..config import ExplainConfig
from ..errors import SgtoolError, UsageError, unknown_name
from ..evaluate.explain import MAPS, compute_maps, maps_bytes, read_maps
from ..saliency import position_score
from ..store import atomic_write_bytes, atomic_write_text, check_dir, make_dir
from .figure import DPI, png_bytes

# Layout of an image grid, in inches: each cell is IMG_IN square plus room for its caption.
CELL_W, CELL_H, IMG_IN, HEAD_IN, FOOT_IN = 1.7, 1.75, 1.4, 0.45, 0.55


def explain_size(rows: int, cols: int) -> tuple[int, int]:
    """(width, height) in pixels of an image explain grid with `rows` samples and `cols` columns."""
    return round(cols * CELL_W * DPI), round((HEAD_IN + rows * CELL_H + FOOT_IN) * DPI)


def render_image(maps: dict) -> bytes:
    """Grid: one row per sample; column 0 the input, then one heatmap per (run, method) column,
    each column on one colour scale (0 to its 99th percentile) with a colorbar below it.
    Placed by hand (not constrained layout) so the pixel size is exactly explain_size()."""
    from matplotlib.figure import Figure

    x = maps["input"]  # (N, C, H, W) in [0, 1]
    n, cols = len(x), 1 + len(maps["columns"])
    w, h = explain_size(n, cols)
    W, H = w / DPI, h / DPI
    fig = Figure(figsize=(W, H), dpi=DPI)

    def cell(i, j):  # axes of sample i, column j, with its caption below
        left, bottom = j * CELL_W + (CELL_W - IMG_IN) / 2, FOOT_IN + (n - 1 - i) * CELL_H + (CELL_H - IMG_IN) - 0.05
        ax = fig.add_axes((left / W, bottom / H, IMG_IN / W, IMG_IN / H))
        ax.set_xticks([])
        ax.set_yticks([])
        return ax

    def title(j, text):
        fig.text((j + 0.5) * CELL_W / W, 1 - 0.05 / H, text, ha="center", va="top", fontsize=8)

    classes, labels = maps["classes"], maps["label"].tolist()
    name = lambda c: classes[c] if c < len(classes) else str(c)  # noqa: E731
    img = x.permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
    title(0, "input")
    for i in range(n):
        ax = cell(i, 0)
        ax.imshow(img[i, :, :, 0] if img.shape[3] == 1 else img[i], cmap="gray", vmin=0, vmax=1)
        ax.set_xlabel(f"#{int(maps['index'][i])}: {name(labels[i])}", fontsize=7, labelpad=2)
    for j, (col, attr, pred) in enumerate(zip(maps["columns"], maps["maps"], maps["pred"]), start=1):
        score = position_score(attr).numpy()  # (N, H, W)
        vmax = float(np.percentile(score, 99)) or float(score.max()) or 1.0
        title(j, col["title"])
        for i in range(n):
            ax = cell(i, j)
            im = ax.imshow(score[i], cmap="inferno", vmin=0, vmax=vmax)
            p = int(pred[i])
            ax.set_xlabel(f"pred {name(p)} | label {name(labels[i])}", fontsize=6.5, labelpad=2,
                          color="black" if p == labels[i] else "red")
        cax = fig.add_axes((((j * CELL_W) + 0.15) / W, 0.28 / H, (CELL_W - 0.3) / W, 0.1 / H))
        fig.colorbar(im, cax=cax, orientation="horizontal", extend="max").ax.tick_params(labelsize=6)
    return png_bytes(fig)


# Layout of a series grid, in inches: each panel is the input's lines over its saliency heatmap.
S_W, S_LINES, S_HEAT, S_GAP, S_HEAD, S_FOOT = 2.7, 0.55, 1.45, 0.5, 0.45, 0.55


def series_size(rows: int, cols: int) -> tuple[int, int]:
    return round(cols * S_W * DPI), round((S_HEAD + rows * (S_LINES + S_HEAT + S_GAP) + S_FOOT) * DPI)


def render_series(maps: dict) -> bytes:
    """One panel per (sample, run-method column): the input's features as lines above, and
    |attribution| as a heatmap of features (rows) over time (columns) below it, with the
    ground-truth box outlined in cyan where the data has one. Each panel has its own scale, 0 to
    its 99th percentile (a series' saliency can differ by orders of magnitude from the next
    one's); padded steps are greyed out."""
    from matplotlib.figure import Figure

    x = maps["input"].numpy()  # (N, T, F)
    n, t, f = x.shape
    cols = len(maps["columns"])
    w, h = series_size(n, cols)
    W, H = w / DPI, h / DPI
    fig = Figure(figsize=(W, H), dpi=DPI)
    gt = maps.get("gt")
    valid = maps.get("valid")
    classes, labels = maps["classes"], maps["label"].tolist()
    name = lambda c: classes[c] if c < len(classes) else str(c)  # noqa: E731
    row_h = S_LINES + S_HEAT + S_GAP
    for j, (col, attr, pred) in enumerate(zip(maps["columns"], maps["maps"], maps["pred"])):
        score = attr.abs().numpy()  # (N, T, F)
        left, width = (j * S_W + 0.4) / W, (S_W - 0.55) / W
        fig.text((j + 0.5) * S_W / W, 1 - 0.05 / H, col["title"], ha="center", va="top", fontsize=8)
        for i in range(n):
            top = H - S_HEAD - i * row_h
            lines = fig.add_axes((left, (top - S_LINES) / H, width, S_LINES / H))
            lines.plot(np.arange(t), x[i], lw=0.5, alpha=0.6)
            lines.set_xlim(-0.5, t - 0.5)
            lines.set_xticks([])
            lines.tick_params(labelsize=5)
            if j == 0:
                lines.set_ylabel(f"#{int(maps['index'][i])}", fontsize=7)
            heat = fig.add_axes((left, (top - S_LINES - S_HEAT) / H, width, S_HEAT / H))
            vmax = float(np.percentile(score[i], 99)) or float(score[i].max()) or 1.0
            im = heat.imshow(score[i].T / vmax, aspect="auto", cmap="inferno", vmin=0, vmax=1, origin="lower",
                             interpolation="nearest")
            if gt is not None:
                heat.contour(gt[i].numpy().T.astype(float), levels=[0.5], colors="cyan", linewidths=0.8)
            if valid is not None and not bool(valid[i].all()):
                pad = ~valid[i].numpy()
                heat.imshow(np.broadcast_to(pad[None, :], (f, t)), aspect="auto", origin="lower", cmap="Greys",
                            alpha=0.5 * pad[None, :].astype(float), interpolation="nearest")
            heat.tick_params(labelsize=5)
            p = int(pred[i])
            heat.set_xlabel(f"time · pred {name(p)} | label {name(labels[i])}", fontsize=6, labelpad=1,
                            color="black" if p == labels[i] else "red")
            if j == 0:
                heat.set_ylabel("feature", fontsize=6)
        cax = fig.add_axes((left, 0.25 / H, width, 0.1 / H))
        bar = fig.colorbar(im, cax=cax, orientation="horizontal", extend="max")
        bar.ax.tick_params(labelsize=6)
        bar.set_label("|attribution| / its 99th percentile", fontsize=6)
    return png_bytes(fig)


# Text: the first TOKENS_SHOWN tokens of each document in the PNG (the HTML shows them all),
# TOKENS_PER_ROW to a row of cells.
TOKENS_SHOWN, TOKENS_PER_ROW, T_CELL_W, T_CELL_H = 160, 16, 0.62, 0.2


def _token_rows(n_tokens: int) -> int:
    return math.ceil(min(n_tokens, TOKENS_SHOWN) / TOKENS_PER_ROW)


def tokens_size(maps: dict) -> tuple[int, int]:
    cols = len(maps["columns"])
    rows = sum(_token_rows(int(v.sum())) for v in maps["real"])
    w = cols * (TOKENS_PER_ROW * T_CELL_W + 0.3)
    h = 0.6 + rows * T_CELL_H + len(maps["real"]) * 0.45
    return round(w * DPI), round(h * DPI)


def render_tokens(maps: dict) -> bytes:
    """Each document's first tokens as a grid of cells, one grid per (run, method) column side by
    side: a cell's colour is the token's score (|gradient summed over its embedding|, each
    document's own scale), human-rationale tokens are underlined in blue. The HTML beside the
    PNG (render_tokens_html) shows whole documents."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    w, h = tokens_size(maps)
    W, H = w / DPI, h / DPI
    fig = Figure(figsize=(W, H), dpi=DPI)
    cmap = colormaps["Reds"]
    col_w = TOKENS_PER_ROW * T_CELL_W + 0.3
    classes, labels = maps["classes"], maps["label"].tolist()
    for j, (col, score, pred) in enumerate(zip(maps["columns"], maps["maps"], maps["pred"])):
        fig.text((j * col_w + col_w / 2) / W, 1 - 0.05 / H, col["title"].replace("\n", " · "), ha="center",
                 va="top", fontsize=8)
        top = H - 0.55
        for i, words in enumerate(maps["tokens"]):
            s = score[i][: len(words)].clamp_min(0)
            hi = float(s[torch.isfinite(s)].max()) if torch.isfinite(s).any() else 1.0
            p = int(pred[i])
            fig.text((j * col_w + 0.15) / W, top / H, f"#{int(maps['index'][i])} pred {classes[p]} | label "
                     f"{classes[labels[i]]}", fontsize=6, va="bottom", color="black" if p == labels[i] else "red")
            for k, word in enumerate(words[:TOKENS_SHOWN]):
                r, c = divmod(k, TOKENS_PER_ROW)
                x0, y0 = j * col_w + 0.15 + c * T_CELL_W, top - (r + 1) * T_CELL_H
                v = float(s[k]) / hi if hi > 0 and math.isfinite(float(s[k])) else 0.0
                fig.patches.append(__import__("matplotlib.patches", fromlist=["Rectangle"]).Rectangle(
                    (x0 / W, y0 / H), (T_CELL_W - 0.02) / W, (T_CELL_H - 0.02) / H, transform=fig.transFigure,
                    facecolor=cmap(0.85 * v), edgecolor="none"))
                fig.text((x0 + 0.03) / W, (y0 + 0.05) / H, word[:9], fontsize=5.5, color="white" if v > 0.6 else "black")
                if bool(maps["gt"][i][k]):
                    fig.lines.append(__import__("matplotlib.lines", fromlist=["Line2D"]).Line2D(
                        [x0 / W, (x0 + T_CELL_W - 0.02) / W], [(y0 + 0.01) / H] * 2, transform=fig.transFigure,
                        color="tab:blue", linewidth=1.2))
            top -= _token_rows(len(words)) * T_CELL_H + 0.45
    return png_bytes(fig)


def render_tokens_html(maps: dict) -> str:
    """One self-contained HTML page: one row per document, one column per (run, method); each
    token's background is its score (the document's own scale), rationale tokens underlined."""
    import html as h

    head = "".join(f"<th>{h.escape(c['title']).replace(chr(10), '<br>')}</th>" for c in maps["columns"])
    rows = []
    classes, labels = maps["classes"], maps["label"].tolist()
    for i, words in enumerate(maps["tokens"]):
        cells = []
        for score, pred in zip(maps["maps"], maps["pred"]):
            s = score[i][: len(words)].clamp_min(0)
            hi = float(s[torch.isfinite(s)].max()) if torch.isfinite(s).any() else 1.0
            spans = []
            for k, word in enumerate(words):
                v = float(s[k]) / hi if hi > 0 and math.isfinite(float(s[k])) else 0.0
                style = f"background:rgba(220,40,30,{0.85 * v:.3f})"
                if bool(maps["gt"][i][k]):
                    style += ";text-decoration:underline;text-decoration-color:#1f77b4;text-decoration-thickness:2px"
                spans.append(f"<span style='{style}'>{h.escape(word)}</span>")
            p = int(pred[i])
            verdict = f"pred {h.escape(classes[p])} | label {h.escape(classes[labels[i]])}"
            color = "" if p == labels[i] else " style='color:#c00'"
            cells.append(f"<td><div class='v'{color}>#{int(maps['index'][i])} {verdict}</div>{' '.join(spans)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>sgtool explain</title><style>"
            "body{font-family:system-ui,sans-serif;margin:1.5em}table{border-collapse:collapse}"
            "td,th{vertical-align:top;border:1px solid #ddd;padding:6px;max-width:42em;line-height:1.6;font-size:0.85em}"
            ".v{color:#555;font-size:0.9em;margin-bottom:4px}</style></head><body>"
            f"<h1>Saliency on {h.escape(maps['dataset'])}</h1><p>Each token's background: its saliency "
            "(|gradient summed over its embedding|), on each document's own scale. Underlined: the human rationale."
            f"</p><table><tr>{head}</tr>{''.join(rows)}</table></body></html>")


RENDERERS = {"image": render_image, "series": render_series, "tokens": render_tokens}
SIZES = {"image": lambda n, c: explain_size(n, c + 1), "series": series_size}


def render_maps(maps: dict) -> bytes:
    kind = maps["kind"]
    if kind not in RENDERERS:
        raise unknown_name("explain renderer", kind, RENDERERS)
    return RENDERERS[kind](maps)


def explain(runs: list[dict], cfg: ExplainConfig, out: str | Path = "explain.png") -> dict:
    """One PNG grid comparing the runs' saliency maps, and the raw maps as safetensors next to it
    (and, for text, an HTML page). Returns {"png", "maps", "html" (paths), "size" (width, height)}."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out must be a .png file, got {out}")
    check_dir(out.parent, "--out")
    maps = compute_maps(runs, cfg)
    png = render_maps(maps)
    make_dir(out.parent, "--out")
    try:
        atomic_write_bytes(out, png)
        atomic_write_bytes(out.with_suffix(".safetensors"), maps_bytes(maps))
        if maps["kind"] == "tokens":
            atomic_write_text(out.with_suffix(".html"), render_tokens_html(maps))
    except OSError as e:
        raise SgtoolError(f"cannot write {out}: {e.strerror or e}; pass --out FILE.png") from None
    size = tokens_size(maps) if maps["kind"] == "tokens" else SIZES[maps["kind"]](len(maps["input"]), len(maps["columns"]))
    return {"png": out, "maps": out.with_suffix(".safetensors"), "size": size,
            "html": out.with_suffix(".html") if maps["kind"] == "tokens" else None}


def draw_entry(res: dict, maps: dict | None = None) -> None:
    """The PNG (and, for text, the HTML page) of a cached explain evaluation, beside its maps."""
    path = res["files"][MAPS]
    maps = maps if maps is not None else read_maps(path)
    if not path.with_suffix(".png").is_file():
        atomic_write_bytes(path.with_suffix(".png"), render_maps(maps))
    if maps["kind"] == "tokens" and not path.with_suffix(".html").is_file():
        atomic_write_text(path.with_suffix(".html"), render_tokens_html(maps))

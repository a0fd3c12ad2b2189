"""explain: saliency maps of several runs side by side (paper, Figure 2), with one renderer
per kind of input, and the raw maps saved as safetensors next to the picture. `explain_run` does
the same for one run and caches it under runs/<id>/explain/, which is what `sgtool sweep` runs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ..config import eval_hash
from ..errors import SgtoolError, UsageError, unknown_name
from ..store import atomic_write_bytes, load_tensors, save_tensors, write_json
from .plots import DPI, _png

# A renderer per data kind: fn(maps) -> PNG bytes. Time series and text get their own later.


@dataclass(frozen=True)
class ExplainConfig:
    """The settings of one cached explain_run; hashed like the other evaluations (config.eval_hash)."""
    methods: tuple[str, ...] = ("grad",)
    n: int = 8
    indices: tuple[int, ...] | None = None
    output: str = "logprob"  # as mask-eval: the saliency of log p(label | x), or of the logit
    baseline: str = "authors"  # as mask-eval
    data_dir: str | None = None  # not hashed
    device: str = "auto"  # not hashed


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

    from ..saliency import position_score

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
    return _png(fig)


RENDERERS = {"image": render_image}


def render_maps(maps: dict) -> bytes:
    kind = maps["kind"]
    if kind not in RENDERERS:
        raise unknown_name("explain renderer", kind, RENDERERS)
    return RENDERERS[kind](maps)


def _column_title(run: dict, method: str) -> str:
    c = run["config"]
    k = "" if c.get("trainer") == "standard" else f" mask-frac {c.get('mask_frac')}"
    return f"{c.get('trainer')}{k}\n{method} · {run['id'][:6]}"


def validate_explain(cfg: ExplainConfig) -> None:
    from ..config import MASK_OUTPUTS
    from ..saliency import BASELINES, get_saliency

    if cfg.output not in MASK_OUTPUTS:
        raise unknown_name("output", cfg.output, MASK_OUTPUTS)
    if cfg.baseline not in BASELINES:
        raise unknown_name("baseline", cfg.baseline, BASELINES)

    if not cfg.methods:
        raise UsageError("--method is empty; give a comma-separated list such as grad,ig")
    for m in cfg.methods:
        get_saliency(m)
    if cfg.n < 1:
        raise UsageError(f"--n must be at least 1, got {cfg.n}")
    if cfg.indices is not None and (not cfg.indices or min(cfg.indices) < 0):
        raise UsageError(f"--index must list test sample numbers (0 or more), got {list(cfg.indices)}")


def compute_maps(runs: list[dict], cfg: ExplainConfig) -> dict:
    """Saliency of each (run, method) pair on the same test samples (the first run's test split).

    Returns {"kind", "dataset", "classes", "input" (N, C, H, W), "label" (N,), "index" (N,),
    "columns": [{"run", "method", "trainer", "mask_frac", "title"}], "maps": [(N, C, H, W)],
    "pred": [(N,)]}: one map and prediction vector per column. Saliency targets the label.
    """
    from ..config import from_dict
    from ..data import get_dataset
    from ..saliency import explain_setup, get_saliency
    from ..train import load_data, load_model, pick_device

    validate_explain(cfg)
    if not runs:
        raise UsageError("explain needs at least one run")
    fns = {m: get_saliency(m) for m in cfg.methods}
    datasets = sorted({r["config"].get("dataset") for r in runs})
    if len(datasets) > 1:
        raise UsageError(f"explain compares runs of one dataset; got {', '.join(datasets)}")
    spec = get_dataset(datasets[0])
    if len(spec.shape) != 3:
        raise SgtoolError(f"explain has no renderer for {datasets[0]} yet (shape {spec.shape})")
    cfg0 = runs[0]["config"]
    # The first run's own test split: for synthetic data the samples depend on the split size.
    data = load_data(from_dict(cfg0), train_size=1, test_size=cfg0.get("test_size"), data_dir=cfg.data_dir)
    total = len(data.x_test)
    if cfg.indices:
        bad = [i for i in cfg.indices if i >= total]
        if bad:
            raise UsageError(f"--index {bad[0]} is out of range: the test split has {total} samples")
        idx = torch.tensor(list(cfg.indices))
    else:
        idx = torch.arange(min(cfg.n, total))
    dev = pick_device(cfg.device)
    x, y = data.x_test[idx], data.y_test[idx]  # (N, C, H, W), (N,)
    out = {"kind": "image", "dataset": datasets[0], "classes": list(data.classes), "input": x, "label": y,
           "index": idx, "columns": [], "maps": [], "pred": []}
    for run in runs:
        model, _ = load_model(run, dev)
        model.requires_grad_(False)  # gradients are taken with respect to the input only
        xd, yd = x.to(dev), y.to(dev)
        with torch.no_grad():
            pred = model(xd).argmax(1).cpu()
        explained, kw = explain_setup(model, cfg.methods, cfg.output, cfg.baseline, spec.layout)
        for m, fn in fns.items():
            attr = fn(explained, xd.clone(), yd, **kw).detach().cpu().float()  # (N, C, H, W)
            out["columns"].append({"run": run["id"], "method": m, "trainer": run["config"].get("trainer"),
                                   "mask_frac": run["config"].get("mask_frac"), "title": _column_title(run, m)})
            out["maps"].append(attr)
            out["pred"].append(pred.clone())  # safetensors refuses tensors that share memory
    return out


def save_maps(path: Path, maps: dict) -> None:
    tensors = {"input": maps["input"], "label": maps["label"], "index": maps["index"]}
    for j, (attr, pred) in enumerate(zip(maps["maps"], maps["pred"])):
        tensors[f"map.{j}"] = attr
        tensors[f"pred.{j}"] = pred
    meta = {k: json.dumps(maps[k]) for k in ("kind", "dataset", "classes", "columns")}
    save_tensors(path, tensors, metadata=meta)


def read_maps(path: Path) -> dict:
    """The dict compute_maps returned, from a file save_maps wrote."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
        t = load_tensors(path)
        cols = meta["columns"]
        return {**meta, "input": t["input"], "label": t["label"], "index": t["index"],
                "maps": [t[f"map.{j}"] for j in range(len(cols))], "pred": [t[f"pred.{j}"] for j in range(len(cols))]}
    except Exception as e:  # noqa: BLE001 - any failure here means the file is unusable
        raise SgtoolError(f"explain maps {path} are corrupt ({type(e).__name__}); skipped") from None


def explain(runs: list[dict], methods: list[str], n: int = 8, indices: list[int] | None = None,
            out: str | Path = "explain.png", data_dir: str | None = None, device: str = "auto") -> dict:
    """One PNG grid comparing the runs' saliency maps, and the raw maps as safetensors next to it.
    Returns {"png": Path, "maps": Path, "size": (width, height)}."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out must be a .png file, got {out}")
    cfg = ExplainConfig(methods=tuple(methods), n=n, indices=tuple(indices) if indices else None,
                        data_dir=data_dir, device=device)
    maps = compute_maps(runs, cfg)
    png = render_maps(maps)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, png)
        save_maps(out.with_suffix(".safetensors"), maps)
    except OSError as e:
        raise SgtoolError(f"cannot write {out}: {e.strerror or e}; pass --out FILE.png") from None
    return {"png": out, "maps": out.with_suffix(".safetensors"), "size": explain_size(len(maps["input"]), 1 + len(maps["columns"]))}


def explain_run(run: dict, cfg: ExplainConfig, force: bool = False) -> dict:
    """explain() of one run, cached under runs/<id>/explain/<eval_id>.{png,safetensors,json};
    the .json is written last, so its presence means the maps are complete."""
    eid = eval_hash(cfg, run["id"])
    folder = run["dir"] / "explain"
    meta_path = folder / f"{eid}.json"
    res = {"id": eid, "png": folder / f"{eid}.png", "maps": folder / f"{eid}.safetensors"}
    if not force and meta_path.is_file():
        return {**res, "cached": True}
    maps = compute_maps([run], cfg)
    folder.mkdir(exist_ok=True)
    atomic_write_bytes(res["png"], render_maps(maps))
    save_maps(res["maps"], maps)
    write_json(meta_path, {"kind": "explain", "run": run["id"], "config": asdict(cfg),
                           "created": datetime.now(timezone.utc).isoformat()})
    return {**res, "cached": False}

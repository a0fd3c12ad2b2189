"""explain as an evaluation: the saliency maps of runs on the same test samples (paper, Figure
2), and one run's maps cached under runs/<id>/explain/ (<id>.safetensors, then <id>.json), which
`sgtool sweep` runs. Rendering them is report.maps's."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from ..config import ExplainConfig, from_dict, validate_explain
from ..data import get_dataset
from ..errors import SgtoolError, UsageError
from ..layout import LAYOUTS, Embedded
from ..runs import load_data, load_model, pick_device
from ..saliency import explain_setup, get_saliency, rnn_safe
from ..store import load_tensors, tensor_bytes
from .pipeline import Context, Evaluation, Output, evaluate

MAPS = ".safetensors"
KINDS = ("image", "series", "tokens")


def _column_title(run: dict, method: str) -> str:
    c = run["config"]
    k = "" if c.get("trainer") == "standard" else f" mask-frac {c.get('mask_frac')}"
    return f"{c.get('trainer')}{k}\n{method} · {run['id'][:6]}"


def _samples(data, cfg: ExplainConfig) -> torch.Tensor:
    total = len(data.x_test)
    if cfg.indices:
        bad = [i for i in cfg.indices if i >= total]
        if bad:
            raise UsageError(f"--index {bad[0]} is out of range: the test split has {total} samples")
        return torch.tensor(list(cfg.indices))
    return torch.arange(min(cfg.n, total))


def _frame(spec, dataset: str, data, idx: torch.Tensor) -> dict:
    """The maps' dict before its columns: the samples, their labels and what the data has."""
    x, y = data.x_test[idx], data.y_test[idx]  # (N, ...), (N,)
    out = {"kind": spec.layout, "dataset": dataset, "classes": list(data.classes), "input": x, "label": y,
           "index": idx, "columns": [], "maps": [], "pred": []}
    if data.gt_test is not None:
        out["gt"] = data.gt_test[idx]
    if data.valid_test is not None:
        out["valid"] = data.valid_test[idx]
    if spec.layout == "tokens":  # the words, and scores of tokens rather than raw attributions
        vocab = data.extras["vocab"]
        out["real"] = x != data.extras.get("pad_id", 0)
        out["tokens"] = [[vocab[t] for t in row[r].tolist()] for row, r in zip(x, out["real"])]
        out.setdefault("gt", torch.zeros_like(x, dtype=torch.bool))
    return out


def add_columns(out: dict, run: dict, model, cfg: ExplainConfig, device) -> None:
    """One column per method of cfg: `run`'s model's maps of out's samples, and its predictions.
    Saliency targets the label."""
    layout = out["kind"]
    xd, yd = out["input"].to(device), out["label"].to(device)
    with torch.no_grad():
        pred = model(xd).argmax(1).cpu()
    explained, kw = explain_setup(model, cfg.methods, cfg.output, cfg.baseline, layout)
    for m in cfg.methods:
        fn = get_saliency(m)
        with rnn_safe(model, xd):
            if layout == "tokens":
                attr = _token_scores(model, fn, xd, yd, cfg)  # (N, L)
            else:
                attr = fn(explained, xd.clone(), yd, **kw).detach().cpu().float()  # like x
        out["columns"].append({"run": run["id"], "method": m, "trainer": run["config"].get("trainer"),
                               "mask_frac": run["config"].get("mask_frac"), "title": _column_title(run, m)})
        out["maps"].append(attr)
        out["pred"].append(pred.clone())  # safetensors refuses tensors that share memory


def compute_maps(runs: list[dict], cfg: ExplainConfig) -> dict:
    """Saliency of each (run, method) pair on the same test samples (the first run's test split).

    Returns {"kind" (the layout), "dataset", "classes", "input" (N, ...), "label" (N,), "index"
    (N,), "columns": [{"run", "method", "trainer", "mask_frac", "title"}], "maps": [attribution
    like the input], "pred": [(N,)], and "gt", "valid" where the data has them}: one map and
    prediction vector per column."""
    validate_explain(cfg)
    if not runs:
        raise UsageError("explain needs at least one run")
    datasets = sorted({r["config"].get("dataset") for r in runs})
    if len(datasets) > 1:
        raise UsageError(f"explain compares runs of one dataset; got {', '.join(datasets)}")
    spec = get_dataset(datasets[0], cfg.data_dir)
    if spec.layout not in KINDS:
        raise SgtoolError(f"explain has no renderer for {spec.layout} data yet")
    cfg0 = runs[0]["config"]
    # The first run's own test split: for synthetic data the samples depend on the split size.
    data = load_data(from_dict(cfg0), train_size=1, test_size=cfg0.get("test_size"), data_dir=cfg.data_dir)
    out = _frame(spec, datasets[0], data, _samples(data, cfg))
    dev = pick_device(cfg.device)
    for run in runs:
        model, _ = load_model(run, dev, data=data if spec.layout == "tokens" else None, data_dir=cfg.data_dir)
        model.requires_grad_(False)  # gradients are taken with respect to the input only
        add_columns(out, run, model, cfg, dev)
    return out


def _token_scores(model, fn, ids, y, cfg) -> torch.Tensor:
    """(N, L) token scores of a token model: |the method's attribution of the embeddings, summed
    over each embedding| (what the ERASER evaluation ranks by)."""
    explained, kw = explain_setup(Embedded(model), cfg.methods, cfg.output, cfg.baseline or "zero", "tokens")
    if "scale" in kw:
        kw["scale"] = float(model.emb.weight[model.first_word_id:].std())
    if kw.get("baseline") == "authors":
        kw["baseline"] = "zero"
    b = LAYOUTS["tokens"].batch(model, ids)
    attr = fn(explained, b.inp.detach(), y, args=b.args, **kw).detach()
    return LAYOUTS["tokens"].score(attr, b.inp, "abs").float().cpu()


def maps_bytes(maps: dict) -> bytes:
    """The maps as a safetensors file: the tensors, and the rest as JSON in its metadata."""
    tensors = {k: maps[k] for k in ("input", "label", "index", "gt", "valid", "real") if k in maps}
    for j, (attr, pred) in enumerate(zip(maps["maps"], maps["pred"])):
        tensors[f"map.{j}"] = attr
        tensors[f"pred.{j}"] = pred
    meta = {k: json.dumps(maps[k]) for k in ("kind", "dataset", "classes", "columns", "tokens") if k in maps}
    return tensor_bytes(tensors, metadata=meta)


def read_maps(path: Path) -> dict:
    """The dict compute_maps returned, from a file save_maps wrote."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
        t = load_tensors(path)
        cols = meta["columns"]
        return {**meta, **{k: t[k] for k in ("input", "label", "index", "gt", "valid", "real") if k in t},
                "maps": [t[f"map.{j}"] for j in range(len(cols))], "pred": [t[f"pred.{j}"] for j in range(len(cols))]}
    except Exception as e:  # noqa: BLE001 - any failure here means the file is unusable
        raise SgtoolError(f"explain maps {path} are corrupt ({type(e).__name__}); skipped") from None


def compute(ctx: Context) -> Output:
    """One run's maps, as the cached entry of an explain evaluation."""
    if ctx.spec.layout not in KINDS:
        raise SgtoolError(f"explain has no renderer for {ctx.spec.layout} data yet")
    out = _frame(ctx.spec, ctx.train.dataset, ctx.data, _samples(ctx.data, ctx.cfg))
    add_columns(out, ctx.run, ctx.model, ctx.cfg, ctx.device)
    return Output([], meta={"n": len(out["index"])}, files={MAPS: maps_bytes(out)})


EXPLAIN = Evaluation("explain", ExplainConfig, compute, tables=(), channels_last=False, needs=lambda options: (MAPS,))


def explain_run(run: dict, cfg: ExplainConfig, force: bool = False) -> dict:
    """The cached maps of one run (`evaluate(EXPLAIN, ...)`); the result adds "maps", their path."""
    res = evaluate(EXPLAIN, run, cfg, force)
    return {**res, "maps": res["files"][MAPS]}

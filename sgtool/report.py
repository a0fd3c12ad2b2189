"""Reports and saliency pictures from the run store.

`collect(runs_root)` reads every run and its evaluations (mask_eval/, attack/, explain/) into
tidy pandas DataFrames, one row per run and measurement. `tables(rep)` groups the runs that
differ only in seed (mean, std and n), `plots(rep)` draws the paper's figures as PNG bytes, and
`write_report(rep, fmt, out)` renders md, csv, latex or one self-contained html file.
A run dir or evaluation file that is half-written or corrupt becomes a warning, never a crash.

`explain(runs, methods, ...)` draws saliency maps of several runs side by side (paper, Figure 2)
and saves the raw maps as safetensors next to the PNG; `explain_run` does the same for one run
and caches it under runs/<id>/explain/, which is what `sgtool sweep` runs.

Plots use matplotlib's object API (Figure + the Agg canvas), never pyplot: no global state and
no display is needed.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .config import ASGT_ONLY, FIELD_TYPES, NOT_HASHED, SGT_ONLY, eval_hash
from .errors import SgtoolError, UsageError, unknown_name
from .store import atomic_write_bytes, atomic_write_text, list_runs, load_tensors, save_tensors, write_json

FORMATS = ("table", "md", "csv", "latex", "html")
TRAINER_ORDER = {"standard": 0, "sgt": 1, "asgt": 2}
# Paper Figure 3: standard solid, SGT dashed, the random baseline dotted.
TRAINER_STYLE = {"standard": "-", "sgt": "--", "asgt": "-."}
RANDOM_STYLE = ":"
# The columns every training table shows; other config keys appear only where runs differ in them.
BASE_KEYS = ["dataset", "model", "trainer", "mask_frac", "kl_weight", "epochs"]
HEADERS = {"mask_frac": "mask-frac", "kl_weight": "λ", "test_acc": "test acc", "train_seconds": "train s"}
EVAL_KINDS = ("mask_eval", "attack", "explain")
# Evaluation settings that do not split a table: each row already names its method (mask-eval)
# or eps (attack), so evaluations that differ only in these lists share rows.
GROUP_IGNORE = {"mask_eval": {"methods"}, "attack": {"eps"}}
DPI = 100


# =========================================================================== collect


@dataclass
class Report:
    root: Path
    runs: pd.DataFrame  # one row per completed run: id, group, seed, test_acc, train_seconds
    groups: pd.DataFrame  # one row per group (runs equal but for the seed): group, label, config columns
    curves: pd.DataFrame  # run, group, epoch, train_loss, train_acc, test_acc
    mask_eval: pd.DataFrame  # run, group, eval, method, fraction, accuracy
    mask_summary: pd.DataFrame  # run, group, eval, method, metric, value
    attack: pd.DataFrame  # run, group, eval, method, eps, accuracy
    explain: list[dict]  # {"run", "group", "eval", "path"} of each cached explain_run
    evals: dict[str, pd.DataFrame]  # kind -> one row per evaluation config: eval, its varying keys
    warnings: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.runs.empty

    def empty_message(self, where: list[str] | None = None) -> str:
        """One line saying why there is nothing to report."""
        if where:
            return f"no completed runs in {self.root} match --where {' '.join(where)}"
        if self.warnings:
            return f"no completed runs in {self.root} ({len(self.warnings)} skipped: see the warnings above)"
        return f"no runs in {self.root}; train or sweep first, or pass --runs-dir DIR"


def effective_config(cfg: dict) -> dict:
    """The fields that make a run what it is: what config.hashed_fields keeps, from a stored dict."""
    d = {k: v for k, v in cfg.items() if k not in NOT_HASHED}
    if d.get("trainer") == "standard":
        d = {k: v for k, v in d.items() if k not in SGT_ONLY}
    if d.get("trainer") != "asgt":
        d = {k: v for k, v in d.items() if k not in ASGT_ONLY}
    return d


def parse_where(where: list[str] | None) -> dict[str, str]:
    """["trainer=sgt", "mask-frac=0.5"] -> {"trainer": "sgt", "mask_frac": "0.5"}."""
    out = {}
    for item in where or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise UsageError(f"--where expects key=value, got '{item}'")
        if key not in FIELD_TYPES or key in NOT_HASHED:
            valid = sorted(k.replace("_", "-") for k in FIELD_TYPES if k not in NOT_HASHED)
            raise unknown_name("--where key", key.replace("_", "-"), valid)
        out[key] = value.strip()
    return out


def _equal(actual, wanted: str) -> bool:
    if actual is None:
        return False
    try:
        return math.isclose(float(actual), float(wanted), rel_tol=1e-9, abs_tol=1e-12)
    except (TypeError, ValueError):
        return str(actual) == wanted


def _key(d: dict) -> str:
    return json.dumps(d, sort_keys=True, default=str)


def _varying(configs: list[dict], skip=()) -> list[str]:
    """Keys whose value differs between the configs that have them (standard runs have no
    SGT-only keys: that alone does not make mask_fill vary)."""
    keys = list(dict.fromkeys(k for c in configs for k in c))
    return [k for k in keys if k not in skip and len({_key(c[k]) for c in configs if k in c}) > 1]


def _numeric(df: pd.DataFrame, need: list[str]) -> pd.DataFrame:
    """Check the columns a table needs and turn all but run and method into numbers
    (ValueError on anything else; an empty cell is NaN)."""
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"missing columns {missing}")
    for c in df.columns:
        if c not in ("run", "method"):
            df[c] = pd.to_numeric(df[c])
    if "method" in df.columns:
        df["method"] = df["method"].astype(str)
    return df


def _read_eval(run: dict, kind: str, warnings: list[str]):
    """(eval_id, json dict, csv DataFrame, summary DataFrame | None) for each complete evaluation
    of one kind; half-written ones (a csv without its .json) and corrupt ones become warnings."""
    folder = run["dir"] / kind
    if not folder.is_dir():
        return
    label = kind.replace("_", "-")
    done = {p.name[: -len(".json")] for p in folder.glob("*.json")}
    for p in sorted(folder.glob("*.csv")):
        eid = p.name.split(".")[0]
        if eid not in done and not p.name.endswith(".summary.csv"):
            warnings.append(f"run {run['id']}: {label} {eid} is incomplete (no {eid}.json); skipped")
    for eid in sorted(done):
        try:
            meta = json.loads((folder / f"{eid}.json").read_text())
            if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
                raise ValueError("no config in the .json")
            if kind == "explain":
                yield eid, meta, None, None
                continue
            rows = _numeric(pd.read_csv(folder / f"{eid}.csv"),
                            ["method", "accuracy", "fraction" if kind == "mask_eval" else "eps"])
            summary = None
            if kind == "mask_eval" and (folder / f"{eid}.summary.csv").is_file():
                summary = _numeric(pd.read_csv(folder / f"{eid}.summary.csv"), ["method"])
        except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            warnings.append(f"run {run['id']}: {label} {eid} is corrupt ({e}); skipped")
            continue
        yield eid, meta, rows, summary


def collect(runs_root: str | Path, where: list[str] | None = None) -> Report:
    """Every completed run under runs_root (those matching all `where` key=value filters on the
    training config) and its evaluations, as tidy DataFrames."""
    root = Path(runs_root)
    wanted = parse_where(where)
    found, warnings = list_runs(root)
    runs, curves, me, ms, at, ex = [], [], [], [], [], []
    gkeys: dict[str, dict] = {}  # group key -> effective config without seed
    ekeys: dict[str, dict[str, dict]] = {k: {} for k in EVAL_KINDS}  # kind -> eval key -> config
    for r in found:
        cfg = effective_config(r["config"])
        if not all(_equal(cfg.get(k), v) for k, v in wanted.items()):
            continue
        if r.get("status") != "completed":
            warnings.append(f"run {r['id']} is {r.get('status', 'of unknown status')}; left out")
            continue
        try:
            metrics = _numeric(pd.read_csv(r["dir"] / "metrics.csv"), ["epoch", "train_loss", "train_acc", "test_acc",
                                                                      "seconds"])
            test_acc = float(r.get("test_acc", metrics["test_acc"].iloc[-1]))
            seconds = float(r.get("wall_seconds", metrics["seconds"].sum()))
        except (OSError, TypeError, ValueError, IndexError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            warnings.append(f"run {r['id']}: metrics.csv or run.json is corrupt ({e}); left out")
            continue
        base = {k: v for k, v in cfg.items() if k != "seed"}
        g = _key(base)
        gkeys.setdefault(g, base)
        runs.append({"run": r["id"], "group": g, "seed": cfg.get("seed"), "test_acc": test_acc,
                     "train_seconds": seconds})
        for m in metrics.to_dict("records"):
            curves.append({"run": r["id"], "group": g, **{k: m[k] for k in ("epoch", "train_loss", "train_acc", "test_acc")}})
        for kind in EVAL_KINDS:
            for eid, meta, rows, summary in _read_eval(r, kind, warnings):
                econf = {k: v for k, v in meta["config"].items()
                         if k not in NOT_HASHED | {"seed"} | GROUP_IGNORE.get(kind, set())}
                e = _key(econf)
                ekeys[kind].setdefault(e, econf)
                ids = {"run": r["id"], "group": g, "eval": e}
                if kind == "explain":
                    ex.append({**ids, "path": r["dir"] / "explain" / f"{eid}.safetensors"})
                elif kind == "mask_eval":
                    me += [{**ids, "method": row["method"], "fraction": row["fraction"], "accuracy": row["accuracy"]}
                           for row in rows.to_dict("records")]
                    ms += [{**ids, "method": row["method"], "metric": metric, "value": value}
                           for row in ([] if summary is None else summary.to_dict("records"))
                           for metric, value in row.items() if metric not in ("run", "method") and pd.notna(value)]
                else:
                    at += [{**ids, "method": row["method"], "eps": row["eps"], "accuracy": row["accuracy"]}
                           for row in rows.to_dict("records")]

    # Readable ids for groups and evaluation configs, in a stable, meaningful order.
    order = sorted(gkeys, key=lambda g: (str(gkeys[g].get("dataset")), str(gkeys[g].get("model")),
                                         TRAINER_ORDER.get(gkeys[g].get("trainer"), 9),
                                         gkeys[g].get("mask_frac") or 0.0, g))
    gid = {g: f"g{i}" for i, g in enumerate(order)}
    extra = _varying([gkeys[g] for g in order], skip=BASE_KEYS)
    groups = pd.DataFrame([{"group": gid[g], "label": _group_label(gkeys[g], extra),
                            **{k: gkeys[g].get(k) for k in BASE_KEYS + extra}} for g in order],
                          columns=["group", "label", *BASE_KEYS, *extra])
    evals, eid_map = {}, {}
    for kind in EVAL_KINDS:
        keys = list(ekeys[kind])
        vary = _varying([ekeys[kind][e] for e in keys], skip=("run",))
        eid_map[kind] = {e: f"{kind[0]}{i}" for i, e in enumerate(keys)}
        evals[kind] = pd.DataFrame([{"eval": eid_map[kind][e], **{k: _show(ekeys[kind][e].get(k)) for k in vary}}
                                    for e in keys], columns=["eval", *vary])

    def frame(rows, cols, kind=None):
        # An evaluation repeated with a different method list measures the same thing twice.
        df = pd.DataFrame(rows, columns=cols).drop_duplicates(subset=[c for c in cols if c not in (
            "accuracy", "value", "train_loss", "train_acc", "test_acc", "train_seconds")], keep="last")
        df["group"] = df["group"].map(gid)
        if kind:
            df["eval"] = df["eval"].map(eid_map[kind])
        return df

    return Report(
        root=root,
        runs=frame(runs, ["run", "group", "seed", "test_acc", "train_seconds"]),
        groups=groups,
        curves=frame(curves, ["run", "group", "epoch", "train_loss", "train_acc", "test_acc"]),
        mask_eval=frame(me, ["run", "group", "eval", "method", "fraction", "accuracy"], "mask_eval"),
        mask_summary=frame(ms, ["run", "group", "eval", "method", "metric", "value"], "mask_eval"),
        attack=frame(at, ["run", "group", "eval", "method", "eps", "accuracy"], "attack"),
        explain=[{**x, "group": gid[x["group"]], "eval": eid_map["explain"][x["eval"]]} for x in ex],
        evals=evals,
        warnings=warnings,
    )


def _show(v) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(_show(x) for x in v)
    return "-" if v is None else str(v)


def _group_label(cfg: dict, extra: list[str]) -> str:
    """'standard', 'sgt k=0.5', plus the keys in which groups differ: 'sgt k=0.5 mask_fill=mean'."""
    parts = [str(cfg.get("trainer"))]
    if cfg.get("trainer") != "standard":
        parts.append(f"k={cfg.get('mask_frac')}")
    parts += [f"{k}={_show(cfg[k])}" for k in extra if k in cfg]
    return " ".join(parts)


# =========================================================================== tables


def fmt_eps(eps: float) -> str:
    """0.1 -> '0.1'; 8/255 -> '8/255' (eps on the 1/255 grid are how CIFAR papers write them)."""
    if eps == round(eps, 3):
        return f"{eps:g}"
    k = eps * 255
    return f"{round(k):g}/255" if abs(k - round(k)) < 1e-6 else f"{eps:.4g}"


def _pivot(long: pd.DataFrame, index: list[str], column: str, value: str) -> pd.DataFrame:
    """Long rows (one per run and measurement) -> one row per index: n (runs), then for each
    value of `column` its mean across runs and `<col>_std` (NaN when n is 1)."""
    if long.empty:
        return pd.DataFrame()
    cols = list(dict.fromkeys(long[column]))
    stats = long.groupby(index + [column], sort=False)[value].agg(["mean", "std"])
    mean = stats["mean"].unstack(column)[cols]
    std = stats["std"].unstack(column)[cols].add_suffix("_std")
    n = long.groupby(index, sort=False)["run"].nunique().rename("n")
    out = pd.concat([n, mean, std], axis=1)
    out = out[["n"] + [c for col in cols for c in (col, f"{col}_std")]]
    return out.reset_index()


def _with_labels(rep: Report, df: pd.DataFrame, kind: str | None = None) -> pd.DataFrame:
    """Put the group's config columns (and the evaluation's varying keys) in front."""
    if df.empty:
        return df
    out = rep.groups.drop(columns="label").merge(df, on="group")
    if kind:
        out = rep.evals[kind].merge(out, on="eval")
        front = [c for c in rep.groups.columns if c not in ("group", "label")] + list(rep.evals[kind].columns[1:])
        out = out[front + [c for c in out.columns if c not in front]]
    order = {g: i for i, g in enumerate(rep.groups["group"])}
    out = out.sort_values("group", key=lambda s: s.map(order), kind="stable")
    return out.drop(columns=[c for c in ("group", "eval") if c in out.columns]).reset_index(drop=True)


def tables(rep: Report) -> dict[str, pd.DataFrame]:
    """Numeric summary tables, runs grouped over seeds: {name: DataFrame}; a metric column `m`
    is the mean over the group's n runs and `m_std` its standard deviation. Empty tables are left out."""
    out = {}
    long = rep.runs.melt(id_vars=["run", "group"], value_vars=["test_acc", "train_seconds"], var_name="metric")
    out["training"] = _with_labels(rep, _pivot(long, ["group"], "metric", "value"))
    if not rep.mask_eval.empty:
        acc = rep.mask_eval.sort_values("fraction", kind="stable")
        acc = acc.assign(column=acc["fraction"].map(lambda f: f"{f:g}"))
        wide = _pivot(acc, ["group", "eval", "method"], "column", "accuracy")
        auc = rep.mask_summary[rep.mask_summary["metric"].isin(["auc", "auc_vs_random"])]
        if not auc.empty:
            wide = wide.merge(_pivot(auc, ["group", "eval", "method"], "metric", "value").drop(columns="n"),
                              on=["group", "eval", "method"], how="left")
        out["mask_eval"] = _with_labels(rep, wide, "mask_eval")
    gt = rep.mask_summary[rep.mask_summary["metric"].isin(["aup", "aur", "precision_at_gt"])]
    if not gt.empty:
        out["ground_truth"] = _with_labels(rep, _pivot(gt, ["group", "eval", "method"], "metric", "value"),
                                           "mask_eval")
    if not rep.attack.empty:
        a = rep.attack
        methods = [m for m in dict.fromkeys(a["method"]) if m not in ("clean", "worst")] + ["worst"]
        rank = {m: i for i, m in enumerate(["clean"] + methods)}
        a = a.assign(column=[("clean" if m == "clean" else f"{m} ε={fmt_eps(e)}") for m, e in zip(a["method"], a["eps"])],
                     _r=a["method"].map(rank).fillna(len(rank)))
        a = a.sort_values(["_r", "eps"], kind="stable")
        out["robustness"] = _with_labels(rep, _pivot(a, ["group", "eval"], "column", "accuracy"), "attack")
    return {k: v for k, v in out.items() if not v.empty}


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def formatted(df: pd.DataFrame) -> pd.DataFrame:
    """Strings for display: 'mean ± std' where a group has more than one run, '-' for nothing."""
    stds = {c for c in df.columns if isinstance(c, str) and c.endswith("_std")}
    metrics = [c for c in df.columns if f"{c}_std" in stds]
    out = {}
    for c in df.columns:
        if c in stds:
            continue
        if c in metrics:
            digits = 1 if c == "train_seconds" else 3
            out[HEADERS.get(c, c)] = [
                "-" if pd.isna(m) else f"{m:.{digits}f}" + ("" if pd.isna(s) or n < 2 else f" ± {s:.{digits}f}")
                for m, s, n in zip(df[c], df[f"{c}_std"], df["n"])
            ]
        else:
            out[HEADERS.get(c, c)] = [_cell(v) for v in df[c]]
    return pd.DataFrame(out)


def split_constant(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """For narrow displays: the label columns (those before n) that hold one value in every
    row move out of the table into a caption, 'dataset synthetic · model small-cnn'."""
    labels = list(df.columns[: list(df.columns).index("n")]) if "n" in df.columns else []
    const = [c for c in labels if len(df) > 1 and df[c].nunique() == 1]
    caption = " · ".join(f"{c} {df[c].iloc[0]}" for c in const if df[c].iloc[0] != "-")
    return df.drop(columns=const), caption


TITLES = {
    "training": "Training",
    "mask_eval": "Mask-eval: accuracy after removing the most salient features",
    "ground_truth": "Ground truth: saliency against the true salient region",
    "robustness": "Robustness: accuracy under attack",
}
NOTES = {
    "training": "Runs that differ only in seed are grouped: mean ± std over n runs.",
    "mask_eval": "Numbered columns: accuracy with that fraction of the features removed, most salient "
                 "first (morf; lerf: least salient first). auc: area under that curve; auc_vs_random: "
                 "auc minus the random baseline's (lower means the saliency finds the features that matter).",
    "ground_truth": "aup, aur: area under precision and recall of the top-ranked features against the "
                    "ground-truth region; precision_at_gt: precision at the region's size.",
    "robustness": "clean: no attack. method ε: accuracy under that attack; worst: a sample counts as correct "
                  "only if every attack fails on it.",
}


# =========================================================================== plots


def _figure(nplots: int, ncols: int = 3, w: float = 4.2, h: float = 3.2):
    from matplotlib.figure import Figure

    ncols = min(ncols, nplots)
    nrows = math.ceil(nplots / ncols)
    fig = Figure(figsize=(w * ncols, h * nrows + 0.8), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[nplots:]:
        ax.set_visible(False)
    return fig, axes[:nplots]


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _mean_std(df: pd.DataFrame, by: list[str], x: str, y: str) -> pd.DataFrame:
    return df.groupby(by + [x], sort=False)[y].agg(["mean", "std", "count"]).reset_index().sort_values(x)


def _line(ax, d: pd.DataFrame, x: str, color, style: str, label: str, marker=None):
    ax.plot(d[x], d["mean"], linestyle=style, color=color, label=label, marker=marker, markersize=4)
    band = d["std"].fillna(0.0)
    if (d["count"] > 1).any():
        ax.fill_between(d[x], d["mean"] - band, d["mean"] + band, color=color, alpha=0.15, linewidth=0)


def _legend(fig, axes):
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        # about two inches per legend entry, so that a one-panel figure does not cut it off
        ncols = max(1, min(len(labels), int(fig.get_figwidth() // 2.0)))
        fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize=8, frameon=False)


def _group_colors(rep: Report) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {g: cmap(i % 10) for i, g in enumerate(rep.groups["group"])}


def _dataset_of(rep: Report) -> dict[str, str]:
    return dict(zip(rep.groups["group"], rep.groups["dataset"]))


def _eval_title(rep: Report, kind: str, eid: str) -> str:
    row = rep.evals[kind][rep.evals[kind]["eval"] == eid]
    return ", ".join(f"{k} {row[k].iloc[0]}" for k in row.columns[1:])


def _plot_setup(rep: Report, frame):
    """What every per-group plot needs: colour, label and trainer per group, and the frame with
    each row's dataset, so that plots split by dataset."""
    g = rep.groups
    return (_group_colors(rep), dict(zip(g["group"], g["label"])), dict(zip(g["group"], g["trainer"])),
            frame.assign(dataset=frame["group"].map(_dataset_of(rep))))


def plot_mask_eval(rep: Report) -> list[tuple[str, str, bytes]]:
    """Accuracy-drop curves, one panel per saliency method (paper Figure 3): each model's curve
    in its colour, standard solid, SGT dashed; that model's random-removal curve dotted."""
    out = []
    if rep.mask_eval.empty:
        return out
    colors, labels, trainers, df = _plot_setup(rep, rep.mask_eval)
    for (dataset, eid), d in df.groupby(["dataset", "eval"], sort=False):
        stats = _mean_std(d, ["group", "method"], "fraction", "accuracy")
        methods = [m for m in dict.fromkeys(d["method"]) if m != "random"] or ["random"]
        fig, axes = _figure(len(methods))
        for ax, method in zip(axes, methods):
            for g in [g for g in rep.groups["group"] if g in set(d["group"])]:
                s = stats[(stats["group"] == g) & (stats["method"] == method)]
                if not s.empty:
                    _line(ax, s, "fraction", colors[g], TRAINER_STYLE.get(trainers[g], "-"), labels[g])
                r = stats[(stats["group"] == g) & (stats["method"] == "random")]
                if method != "random" and not r.empty:
                    _line(ax, r, "fraction", colors[g], RANDOM_STYLE, f"{labels[g]}: random")
            ax.set_title(method)
            ax.set_xlabel("fraction of features removed")
            ax.set_ylabel("accuracy")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
        _legend(fig, axes)
        sub = _eval_title(rep, "mask_eval", eid)
        fig.suptitle(f"{dataset}: accuracy drop" + (f" ({sub})" if sub else ""))
        name = f"mask_eval_{dataset}_{eid}.png" if len(rep.evals["mask_eval"]) > 1 else f"mask_eval_{dataset}.png"
        out.append((name, f"{dataset}: accuracy drop per saliency method", _png(fig)))
    return out


def plot_robustness(rep: Report) -> list[tuple[str, str, bytes]]:
    """Robust accuracy against eps, one panel per attack (and the worst case), one line per model."""
    out = []
    if rep.attack.empty:
        return out
    colors, labels, trainers, df = _plot_setup(rep, rep.attack)
    for (dataset, eid), d in df.groupby(["dataset", "eval"], sort=False):
        clean = d[d["method"] == "clean"]
        methods = [m for m in dict.fromkeys(d["method"]) if m not in ("clean", "worst")]
        methods += ["worst"] if (d["method"] == "worst").any() else []
        fig, axes = _figure(len(methods))
        for ax, method in zip(axes, methods):
            # Each curve starts at eps 0 with the clean accuracy.
            sub = pd.concat([clean.assign(method=method), d[d["method"] == method]])
            stats = _mean_std(sub, ["group"], "eps", "accuracy")
            for g in [g for g in rep.groups["group"] if g in set(d["group"])]:
                s = stats[stats["group"] == g]
                _line(ax, s, "eps", colors[g], TRAINER_STYLE.get(trainers[g], "-"), labels[g], marker="o")
            ax.set_title("worst case over attacks" if method == "worst" else method)
            ax.set_xlabel("ε")
            ax.set_ylabel("robust accuracy")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
        _legend(fig, axes)
        fig.suptitle(f"{dataset}: robust accuracy against ε")
        name = f"robustness_{dataset}_{eid}.png" if len(rep.evals["attack"]) > 1 else f"robustness_{dataset}.png"
        out.append((name, f"{dataset}: robust accuracy against ε", _png(fig)))
    return out


def plot_curves(rep: Report) -> list[tuple[str, str, bytes]]:
    """Training curves per dataset: test accuracy and training loss per epoch, one line per model."""
    out = []
    colors, labels, trainers = _group_colors(rep), dict(zip(rep.groups["group"], rep.groups["label"])), dict(
        zip(rep.groups["group"], rep.groups["trainer"]))
    df = rep.curves.assign(dataset=rep.curves["group"].map(_dataset_of(rep)))
    for dataset, d in df.groupby("dataset", sort=False):
        fig, axes = _figure(2, w=4.8)
        for ax, (col, title) in zip(axes, [("test_acc", "test accuracy"), ("train_loss", "training loss")]):
            stats = _mean_std(d, ["group"], "epoch", col)
            for g in [g for g in rep.groups["group"] if g in set(d["group"])]:
                _line(ax, stats[stats["group"] == g], "epoch", colors[g], TRAINER_STYLE.get(trainers[g], "-"),
                      labels[g], marker="o")
            if col == "test_acc":  # a flat 1.0 would otherwise get a range of 0.96 to 1.04
                ax.set_ylim(max(0.0, float(stats["mean"].min()) - 0.05), 1.01)
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
        _legend(fig, axes)
        fig.suptitle(f"{dataset}: training curves")
        out.append((f"training_{dataset}.png", f"{dataset}: training curves", _png(fig)))
    return out


def plot_explain(rep: Report) -> list[tuple[str, str, bytes]]:
    """The cached explain maps of one run per group, side by side (paper Figure 2): for each
    dataset and explain config, the lowest seed of each group whose inputs are the same samples."""
    out = []
    seeds = dict(zip(rep.runs["run"], rep.runs["seed"]))
    datasets = _dataset_of(rep)
    by_key: dict[tuple[str, str], dict[str, dict]] = {}
    for x in sorted(rep.explain, key=lambda x: (seeds.get(x["run"], 0), x["run"])):
        by_key.setdefault((datasets[x["group"]], x["eval"]), {}).setdefault(x["group"], x)
    for (dataset, eid), per_group in by_key.items():
        merged = None
        for g in [g for g in rep.groups["group"] if g in per_group]:
            try:
                maps = read_maps(per_group[g]["path"])
            except SgtoolError as e:
                rep.warnings.append(str(e))
                continue
            if merged is None:
                merged = maps
            elif torch.equal(maps["input"], merged["input"]):
                merged["columns"] += maps["columns"]
                merged["maps"] += maps["maps"]
                merged["pred"] += maps["pred"]
        if merged is not None:
            name = f"saliency_{dataset}_{eid}.png" if len(rep.evals["explain"]) > 1 else f"saliency_{dataset}.png"
            out.append((name, f"{dataset}: saliency maps, one run per model", render_maps(merged)))
    return out


PLOTS = {"training": plot_curves, "mask_eval": plot_mask_eval, "robustness": plot_robustness,
         "saliency": plot_explain}


def plots(rep: Report) -> dict[str, list[tuple[str, str, bytes]]]:
    """{section: [(file name, caption, PNG bytes)]}."""
    return {k: fn(rep) for k, fn in PLOTS.items()}


# =========================================================================== renderers


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

    for name in ("training", "mask_eval", "ground_truth", "robustness"):
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
    figs = plots(rep) if out is not None else {}
    if out is not None:
        out = Path(out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SgtoolError(f"cannot write report dir {out}: {e.strerror or e}; pass --out DIR") from None
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


# =========================================================================== explain
# A renderer per data kind: fn(maps) -> PNG bytes. Time series and text get their own later.


@dataclass(frozen=True)
class ExplainConfig:
    """The settings of one cached explain_run; hashed like the other evaluations (config.eval_hash)."""
    methods: tuple[str, ...] = ("grad",)
    n: int = 8
    indices: tuple[int, ...] | None = None
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

    from .saliency import position_score

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
    from .saliency import get_saliency

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
    from .data import get_dataset, load
    from .saliency import get_saliency
    from .train import load_model, pick_device

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
    data = load(datasets[0], cfg.data_dir or cfg0.get("data_dir"), train_size=1, test_size=cfg0.get("test_size"))
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
        for m, fn in fns.items():
            attr = fn(model, xd.clone(), yd).detach().cpu().float()  # (N, C, H, W)
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
    cfg = ExplainConfig(tuple(methods), n, tuple(indices) if indices else None, data_dir, device)
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

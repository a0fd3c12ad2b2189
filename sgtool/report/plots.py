"""plots: the paper's figures from a Report, as PNG bytes.

Plots use matplotlib's object API (Figure + the Agg canvas), never pyplot: no global state and
no display is needed.
"""

from __future__ import annotations

import pandas as pd
import torch

from ..errors import SgtoolError
from ..evaluate.explain import read_maps
from .collect import Report
from .figure import figure as _figure
from .figure import png_bytes
from .maps import render_maps

# Paper Figure 3: standard solid, SGT dashed, the random baseline dotted.
TRAINER_STYLE = {"standard": "-", "sgt": "--", "asgt": "-."}
RANDOM_STYLE = ":"


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
        out.append((name, f"{dataset}: accuracy drop per saliency method", png_bytes(fig)))
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
        out.append((name, f"{dataset}: robust accuracy against ε", png_bytes(fig)))
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
        out.append((f"training_{dataset}.png", f"{dataset}: training curves", png_bytes(fig)))
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

"""tables: the Report's DataFrames -> numeric summary tables (seeds grouped: mean, std, n), and
their display strings.
"""

from __future__ import annotations

import math

import pandas as pd

from .collect import Report

HEADERS = {"mask_frac": "mask-frac", "kl_weight": "λ", "test_acc": "test acc", "train_seconds": "train s"}



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

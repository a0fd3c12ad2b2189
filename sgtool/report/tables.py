"""tables: the Report's DataFrames -> numeric summary tables (seeds grouped: mean, std, n), and
their display strings.
"""

from __future__ import annotations

import math

import pandas as pd

from ..data.series import BACKGROUNDS
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
    gt = rep.mask_summary[rep.mask_summary["metric"].isin(GT_METRICS)]
    if not gt.empty:
        gt = gt.assign(_o=gt["metric"].map(GT_METRICS.index)).sort_values("_o", kind="stable")
        out["ground_truth"] = _with_labels(rep, _pivot(gt, ["group", "eval", "method"], "metric", "value"),
                                           "mask_eval")
    for metric in ("diff_aup", "diff_aur"):
        grid = table2(rep, metric)
        if not grid.empty:
            out[f"table2_{metric[5:]}"] = grid
    t1 = table1(rep)
    if not t1.empty:
        out["table1"] = t1
    pl = rep.mask_summary[rep.mask_summary["metric"].isin(PLAUSIBILITY)]
    if not pl.empty:
        pl = pl.assign(_o=pl["metric"].map(PLAUSIBILITY.index)).sort_values("_o", kind="stable")
        out["plausibility"] = _with_labels(rep, _pivot(pl, ["group", "eval", "method"], "metric", "value"), "mask_eval")
    if not rep.attack.empty:
        a = rep.attack
        methods = [m for m in dict.fromkeys(a["method"]) if m not in ("clean", "worst")] + ["worst"]
        rank = {m: i for i, m in enumerate(["clean"] + methods)}
        a = a.assign(column=[("clean" if m == "clean" else f"{m} ε={fmt_eps(e)}") for m, e in zip(a["method"], a["eps"])],
                     _r=a["method"].map(rank).fillna(len(rank)))
        a = a.sort_values(["_r", "eps"], kind="stable")
        out["robustness"] = _with_labels(rep, _pivot(a, ["group", "eval"], "column", "accuracy"), "attack")
    return {k: v for k, v in out.items() if not v.empty}


GT_METRICS = ["aup", "aur", "precision_at_gt", "aupr", "diff_aup", "diff_aur", "time_aup", "time_aur",
              "feature_aup", "feature_aur"]


def _tsb_background(dataset: str) -> str | None:
    """'tsb-rare-time-pseudo-periodic' -> 'pseudo-periodic'; None for other datasets."""
    if not str(dataset).startswith("tsb-"):
        return None
    return next((b for b in sorted(BACKGROUNDS, key=len, reverse=True) if dataset.endswith("-" + b)), None)


def table2(rep: Report, metric: str = "diff_aup") -> pd.DataFrame:
    """The SGT paper's Table 2 from the TSB runs: Diff(AUP) (or Diff(AUR)) of each method, its
    AUP minus the AUP of its own map with the feature axis permuted, per background, architecture
    and method, for standard and SGT training. Each seed's value is averaged over the background's
    datasets (the box types) first; the cell is then the mean and std over seeds (n: seeds).
    The paper does not say how it averaged over datasets; this is sgtool's choice."""
    ms = rep.mask_summary[rep.mask_summary["metric"] == metric]
    if ms.empty:
        return pd.DataFrame()
    g = rep.groups.set_index("group")
    df = ms.assign(dataset=ms["group"].map(g["dataset"]), model=ms["group"].map(g["model"]),
                   trainer=ms["group"].map(g["trainer"]), seed=ms["run"].map(dict(zip(rep.runs["run"], rep.runs["seed"]))))
    df = df.assign(background=df["dataset"].map(_tsb_background)).dropna(subset=["background"])
    df = df[df["method"] != "random"]
    if df.empty:
        return pd.DataFrame()
    per_seed = df.groupby(["background", "eval", "model", "method", "trainer", "seed"], sort=False)["value"].mean()
    stats = per_seed.groupby(["background", "eval", "model", "method", "trainer"], sort=False).agg(["mean", "std", "count"])
    wide = stats.unstack("trainer")
    out = pd.DataFrame(index=wide.index)
    for trainer in [t for t in ("standard", "sgt", "asgt") if t in wide["mean"].columns]:
        out[trainer] = wide["mean"][trainer]
        out[f"{trainer}_std"] = wide["std"][trainer]
    out["n"] = wide["count"].max(axis=1).astype(int)
    out = out.reset_index()
    if out["eval"].nunique() == 1:
        out = out.drop(columns="eval")
    front = [c for c in out.columns if c not in ("n",) and not c.endswith("_std") and c not in ("standard", "sgt", "asgt")]
    return out[front + ["n"] + [c for c in out.columns if c not in front and c != "n"]]


PLAUSIBILITY = ["auprc", "token_f1", "iou_f1", "token_precision", "token_recall"]
TRAINER_NAMES = {"standard": "trad", "sgt": "SGT", "asgt": "ASGT"}


def table1(rep: Report) -> pd.DataFrame:
    """The SGT paper's Table 1 from the text runs: rows dataset x {comprehensiveness, sufficiency}
    (AOPC over the fractions), columns method x {traditional, SGT}, mean (± std) over seeds."""
    ms = rep.mask_summary[rep.mask_summary["metric"].isin(["comprehensiveness", "sufficiency"])]
    if ms.empty:
        return pd.DataFrame()
    g = rep.groups.set_index("group")
    df = ms.assign(dataset=ms["group"].map(g["dataset"]), trainer=ms["group"].map(g["trainer"]))
    methods = list(dict.fromkeys(m for m in df["method"] if m != "random")) + \
        (["random"] if (df["method"] == "random").any() else [])
    df = df.assign(column=[f"{m} {TRAINER_NAMES.get(t, t)}" for m, t in zip(df["method"], df["trainer"])])
    order = {f"{m} {TRAINER_NAMES.get(t, t)}": (i, j) for i, m in enumerate(methods)
             for j, t in enumerate(("standard", "sgt", "asgt"))}
    df = df.assign(_o=df["column"].map(lambda c: order.get(c, (99, 0)))).sort_values("_o", kind="stable")
    out = _pivot(df.rename(columns={"metric": "score"}), ["dataset", "eval", "score"], "column", "value")
    if out["eval"].nunique() == 1:
        out = out.drop(columns="eval")
    return out


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
    "table2_aup": "Table 2 (time series): Diff(AUP), a method's AUP minus its feature-permuted map's",
    "table2_aur": "Table 2 (time series): Diff(AUR)",
    "table1": "Table 1 (text): ERASER comprehensiveness (higher is better) and sufficiency (lower is better)",
    "plausibility": "Text: plausibility against the human rationales",
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
    "table2_aup": "As the SGT paper's Table 2, on sgtool's TSB runs: per background, architecture and method, "
                  "standard and SGT training. Each seed's Diff is averaged over the background's datasets (the box "
                  "types; the paper does not say how it averaged), then mean ± std over seeds (n). The random "
                  "reference is the method's own map with its feature axis permuted, one permutation for all "
                  "samples and steps (the benchmark permuted a randomly chosen method's map).",
    "table2_aur": "The same for AUR.",
    "table1": "As the SGT paper's Table 1: AOPC over the top 1, 5, 10, 20 and 50 % of the tokens removed "
              "(comprehensiveness) or kept alone (sufficiency), of the predicted class's probability; trad: "
              "standard training. mean ± std over seeds (n: the runs behind each row's cells).",
    "plausibility": "auprc: area under precision-recall of the token scores against the human rationale; "
                    "token_f1, iou_f1: of the top tokens at the rationales' share (ERASER's definitions).",
}

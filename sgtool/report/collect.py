"""collect: every run in the store and its evaluations -> tidy pandas DataFrames (a `Report`).

One row per run and measurement. Runs that differ only in seed form a group; a run dir or
evaluation file that is half-written or corrupt becomes a warning, never a crash.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..config import TrainConfig, result_fields
from ..config.options import meta
from ..errors import UsageError, unknown_name
from ..evaluate import EVALUATIONS, read_entry
from ..evaluate.pipeline import entries
from ..store import list_runs

TRAINER_ORDER = {"standard": 0, "sgt": 1, "asgt": 2}
# The columns every training table shows; other config keys appear only where runs differ in them.
BASE_KEYS = ["dataset", "model", "trainer", "mask_frac", "kl_weight", "epochs"]
EVAL_KINDS = tuple(EVALUATIONS)
WHERE_KEYS = [f.name for f in dataclasses.fields(TrainConfig) if meta(f, "hashed")]  # --where filters on these
# Evaluation settings that do not split a table: each row already names its method (mask-eval)
# or eps (attack), so evaluations that differ only in these lists share rows.
GROUP_IGNORE = {"mask_eval": {"methods"}, "attack": {"eps"}}


@dataclass
class Report:
    root: Path
    runs: pd.DataFrame  # one row per completed run: id, group, seed, test_acc, train_seconds
    groups: pd.DataFrame  # one row per group (runs equal but for the seed): group, label, config columns
    curves: pd.DataFrame  # run, group, epoch, train_loss, train_acc, test_acc
    mask_eval: pd.DataFrame  # run, group, eval, method, fraction, accuracy
    mask_summary: pd.DataFrame  # run, group, eval, method, metric, value
    eraser: pd.DataFrame  # text runs: run, group, eval, method, fraction, comprehensiveness, sufficiency
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
    """The fields that make a run what it is (config.result_fields of a stored dict), each shown
    at its stored value, also where the run's id leaves it out."""
    return result_fields(TrainConfig, cfg, omit_legacy=False)


def parse_where(where: list[str] | None) -> dict[str, str]:
    """["trainer=sgt", "mask-frac=0.5"] -> {"trainer": "sgt", "mask_frac": "0.5"}."""
    out = {}
    for item in where or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise UsageError(f"--where expects key=value, got '{item}'")
        if key not in WHERE_KEYS:
            valid = sorted(k.replace("_", "-") for k in WHERE_KEYS)
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
    """(eval_id, json dict, rows DataFrame, summary DataFrame | None) for each whole evaluation of
    one kind (evaluate.read_entry); incomplete and corrupt ones become warnings."""
    ev = EVALUATIONS[kind]
    label = kind.replace("_", "-")
    folder = run["dir"] / kind
    if not folder.is_dir():
        return
    done = {w.eid for w in entries(run["dir"], kind)}
    for p in sorted(folder.glob("*.csv")):
        eid = p.name.split(".")[0]
        if eid not in done and not p.name.endswith(".summary.csv"):
            warnings.append(f"run {run['id']}: {label} {eid} is incomplete (no {eid}.json); skipped")
    for where in entries(run["dir"], kind):
        hit = read_entry(ev, where)
        if hit is None:
            warnings.append(f"run {run['id']}: {label} {where.eid} is corrupt or incomplete; skipped")
            continue
        if kind == "explain":
            yield where.eid, hit["meta"], None, hit["files"]
            continue
        try:
            rows = pd.DataFrame(hit["rows"])
            # a text run's mask-eval (ERASER) has comprehensiveness and sufficiency instead of accuracy
            value = "comprehensiveness" if kind == "mask_eval" and "comprehensiveness" in rows.columns else "accuracy"
            rows = _numeric(rows, ["method", value, "fraction" if kind == "mask_eval" else "eps"])
            summary = _numeric(pd.DataFrame(hit["summary"]), ["method"]) if hit["summary"] is not None else None
        except (TypeError, ValueError) as e:
            warnings.append(f"run {run['id']}: {label} {where.eid} is corrupt ({e}); skipped")
            continue
        yield where.eid, hit["meta"], rows, summary


def collect(runs_root: str | Path, where: list[str] | None = None) -> Report:
    """Every completed run under runs_root (those matching all `where` key=value filters on the
    training config) and its evaluations, as tidy DataFrames."""
    root = Path(runs_root)
    wanted = parse_where(where)
    found, warnings = list_runs(root)
    runs, curves, me, ms, at, ex, er = [], [], [], [], [], [], []
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
            skip = {f.name for f in dataclasses.fields(EVALUATIONS[kind].config) if not meta(f, "hashed")}
            for _eid, stored, rows, summary in _read_eval(r, kind, warnings):
                econf = {k: v for k, v in stored["config"].items()
                         if k not in skip | {"seed"} | GROUP_IGNORE.get(kind, set())}
                e = _key(econf)
                ekeys[kind].setdefault(e, econf)
                ids = {"run": r["id"], "group": g, "eval": e}
                if kind == "explain":
                    ex.append({**ids, "path": summary[".safetensors"]})
                elif kind == "mask_eval":
                    if "accuracy" in rows.columns:
                        me += [{**ids, "method": row["method"], "fraction": row["fraction"], "accuracy": row["accuracy"]}
                               for row in rows.to_dict("records")]
                    else:
                        er += [{**ids, "method": row["method"], "fraction": row["fraction"],
                                "comprehensiveness": row["comprehensiveness"], "sufficiency": row["sufficiency"]}
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
            "accuracy", "value", "train_loss", "train_acc", "test_acc", "train_seconds", "comprehensiveness",
            "sufficiency")], keep="last")
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
        eraser=frame(er, ["run", "group", "eval", "method", "fraction", "comprehensiveness", "sufficiency"], "mask_eval"),
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

"""The SGT paper's Table 2 on sgtool's runs, beside the published one: Diff(AUP), the AUP of a
saliency method minus the AUP of a random map, for traditional (standard) and saliency guided
training, per architecture and method, on the time-series benchmark's Box datasets.

    python benchmarks/ts_table2.py --runs-dir RUNS [--models tcn,lstm-ica,lstm,transformer]
                                   [--seeds 0,1,2] [--datasets box] [--epochs N]

Every (dataset, model, trainer, seed) run is trained into RUNS and mask-evaluated there (or found
already done), so the script can be stopped and rerun; it prints what it has.

How the numbers are made (see the README for why):
- the datasets: the ten TSB types on the Box background (--datasets box), or a comma list;
- Diff(AUP) = AUP(method) - AUP(the method's own map with its feature axis permuted; one
  permutation for all samples and steps). The benchmark permuted one randomly chosen method's
  map; the paper does not say which. `--random uniform` uses a seeded uniform map instead;
- each seed's Diff is averaged over the datasets (the paper does not say how it averaged), and
  the cell is the mean (± std) over seeds;
- the claim checked: SGT raises Diff(AUP) for the TCN and the input-cell-attention LSTM on
  every method (12 cells).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from sgtool.process import tune_process

tune_process()

from sgtool import find_run, make_config, runs_root, train_run  # noqa: E402
from sgtool.config import MaskEvalConfig  # noqa: E402
from sgtool.data.series import TSB_TYPES  # noqa: E402
from sgtool.evaluate import mask_eval  # noqa: E402

# common.py is beside this file: importable also when the file is loaded by its path (the tests)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Output, add_markdown_argument  # noqa: E402

TITLE = "Table 2 on the time-series benchmark: Diff(AUP) of standard and SGT training"
METHODS = ("grad", "ig", "deeplift", "gradshap", "deepliftshap", "smoothgrad")
LABELS = {"grad": "Grad", "ig": "IG", "deeplift": "DeepLIFT", "gradshap": "GradSHAP", "deepliftshap": "DeepSHAP",
          "smoothgrad": "SmoothGrad"}
ARCHS = {"tcn": "TCN", "lstm-ica": "LSTM+ICA", "lstm": "LSTM", "transformer": "Transformer"}
# Published Diff(AUP), traditional / saliency guided (the SGT paper's Table 2).
PAPER = {
    "tcn": [(.106, .168), (.233, .291), (.248, .270), (.235, .288), (.263, .280), (.088, .155)],
    "lstm-ica": [(.060, .118), (.188, .245), (.202, .263), (.198, .250), (.214, .272), (.040, .084)],
    "lstm": [(-.113, -.119), (-.083, -.024), (-.097, -.108), (-.088, -.069), (-.098, -.109), (-.110, -.097)],
    "transformer": [(-.054, -.062), (.061, .044), (-.040, -.032), (.069, .023), (-.014, -.055), (-.018, -.046)],
}


def fmt(values: list[float]) -> str:
    if not values:
        return "   -   "
    m = statistics.mean(values)
    return f"{m:+.3f}" + (f"±{statistics.stdev(values):.3f}" if len(values) > 1 else "      ")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs-dir", required=True)
    ap.add_argument("--models", default="tcn,lstm-ica,lstm,transformer")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--datasets", default="box", help="'box' (the ten Box sets) or a comma list")
    ap.add_argument("--epochs", type=int, default=None, help="[the datasets' default, 20]")
    ap.add_argument("--random", choices=("permuted", "uniform"), default="permuted")
    ap.add_argument("--report-only", action="store_true", help="train nothing; print what RUNS holds")
    add_markdown_argument(ap)
    args = ap.parse_args()
    out = Output()
    models = args.models.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    datasets = [f"tsb-{k}-box" for k in TSB_TYPES] if args.datasets == "box" else args.datasets.split(",")
    ecfg = MaskEvalConfig(methods=(*METHODS, "random"))
    root = runs_root(args.runs_dir)
    # diff[(model, trainer, method, seed)] = [one value per dataset]
    diff: dict[tuple, list[float]] = {}
    acc: dict[tuple, list[float]] = {}
    t_start = time.perf_counter()
    for model in models:
        for seed in seeds:
            for ds in datasets:
                for trainer in ("standard", "sgt"):
                    cfg = make_config(dataset=ds, model=model, trainer=trainer, seed=seed, epochs=args.epochs,
                                      mask_frac=0.5, runs_dir=args.runs_dir)
                    if args.report_only and not (root / __import__("sgtool").config_hash(cfg) / "model.safetensors").is_file():
                        continue
                    t0 = time.perf_counter()
                    res = train_run(cfg)
                    ev = mask_eval(find_run(root, res["id"]), ecfg)
                    s = {r["method"]: r for r in ev["summary"]}
                    for m in METHODS:
                        ref = s[m]["perm_aup"] if args.random == "permuted" else s["random"]["aup"]
                        diff.setdefault((model, trainer, m, seed), []).append(s[m]["aup"] - ref)
                    acc.setdefault((model, trainer), []).append(res["test_acc"])
                    if not (res["already"] and ev["cached"]):  # progress, not on the page: the table has it
                        print(f"  {model} {trainer} seed {seed} {ds}: test acc {res['test_acc']:.3f}, "
                              f"{time.perf_counter() - t0:.0f} s", flush=True)
    out.line(f"\n{len(datasets)} datasets x seeds {seeds}; random reference: {args.random}; "
             f"{time.perf_counter() - t_start:.0f} s in this call\n")
    out.line("Diff(AUP): sgtool standard / SGT (mean over datasets, then mean ± std over seeds) vs the paper")
    agree, total = 0, 0
    for model in models:
        out.line(f"\n{ARCHS.get(model, model)}  (test accuracy, mean over runs: standard "
                 f"{statistics.mean(acc.get((model, 'standard'), [float('nan')])):.3f}, "
                 f"SGT {statistics.mean(acc.get((model, 'sgt'), [float('nan')])):.3f})")
        table = out.table(("method", "standard", "SGT", "paper", "SGT > standard: ours / paper"),
                          fmt="  {:<11} {:>13} {:>13}   {:>13}   {}")
        for i, m in enumerate(METHODS):
            vals = {t: [statistics.mean(diff[(model, t, m, s)]) for s in seeds if (model, t, m, s) in diff]
                    for t in ("standard", "sgt")}
            paper = PAPER.get(model, [(None, None)] * 6)[i]
            ours_up = bool(vals["standard"] and vals["sgt"]) and statistics.mean(vals["sgt"]) > statistics.mean(vals["standard"])
            paper_up = paper[0] is not None and paper[1] > paper[0]
            if model in ("tcn", "lstm-ica") and vals["standard"] and vals["sgt"]:
                total += 1
                agree += ours_up
            pp = f"{paper[0]:+.3f}/{paper[1]:+.3f}" if paper[0] is not None else "-"
            table.row(LABELS[m], fmt(vals["standard"]), fmt(vals["sgt"]), pp,
                      f"{'yes' if ours_up else 'no':>3} / {'yes' if paper_up else 'no'}")
    if total:
        out.line(f"\nThe paper's claim (SGT raises Diff(AUP) for TCN and LSTM+ICA on every method) holds for "
                 f"{agree} of {total} of sgtool's cells.")
    out.write(args.markdown, TITLE)


if __name__ == "__main__":
    main()

"""Does SGT make saliency faithful? The paper's Figure 3 on MNIST, and ground-truth precision on
the synthetic data, with sgtool mask-eval.

MNIST: the standard and the SGT (mask-frac 0.5) runs of --mnist-runs-dir, found by their
training config (`--dataset mnist --trainer standard` and `--trainer sgt --mask-frac 0.5`, every
other setting at its default), are evaluated with the default mask-eval config (7 methods,
fractions 0 to 0.9, most salient first, background fill) on the first --limit test images.
The claims checked, per method:
  1. SGT loses more accuracy than standard training when its most salient pixels are removed:
     SGT's area under the accuracy curve is smaller than standard's;
  2. both lose more than under random removal: auc_vs_random < 0 for each run.

synthetic: standard and SGT runs with the default training config (or --epochs) are trained
into --runs-dir (or taken from there when they exist) and evaluated on the first
--synthetic-limit test images; the claim is
  3. SGT's AUP (weighted saliency precision against the ground-truth pattern) exceeds standard's.

Evaluations are cached in the runs (mask_eval/), as `sgtool mask-eval` caches them.

    python benchmarks/mask_eval_quality.py --mnist-runs-dir /work/bench-runs --data-dir ../shared/data \\
        --runs-dir /tmp/quality-runs --limit 1000 [--methods grad,random] [--legacy]

--legacy also evaluates the MNIST runs with sgtool 0.1's settings (logits, black baselines, ties
by index) and prints old and new AUCs side by side.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# common.py is beside this file: importable also when the file is loaded by its path (the tests)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Output, add_markdown_argument  # noqa: E402

TITLE = "Does SGT make saliency faithful? Accuracy drop on MNIST, ground-truth precision on synthetic data"


def progress(tag: str, methods: int):
    """A line each time one of the `methods` methods finishes its batches (on the terminal alone:
    progress, not a result)."""
    t0 = time.perf_counter()

    def show(method, done, total):
        if done % (total // methods) == 0:
            print(f"    {tag}: {method} done ({done}/{total} batches, {time.perf_counter() - t0:.0f} s)", flush=True)

    return show


def acc_table(out, results: dict[str, dict], methods, fractions) -> None:
    """Accuracy per fraction: one line per (run label, method)."""
    table = out.table(("run", "method", *(f"{f:g}" for f in fractions), "auc"),
                      fmt="    {:<10} {:<13}" + "{:>7}" * len(fractions) + "{:>9}")
    for m in methods:
        for label, res in results.items():
            acc = {r["fraction"]: r["accuracy"] for r in res["rows"] if r["method"] == m}
            auc = next(s["auc"] for s in res["summary"] if s["method"] == m)
            table.row(label, m, *(f"{acc[f]:.4f}" for f in fractions), f"{auc:.4f}")


def verdict(ok: bool) -> str:
    return "holds" if ok else "DOES NOT HOLD"


def mnist_part(out, args, cfg) -> None:
    from sgtool.errors import SgtoolError
    from sgtool.evaluate import mask_eval
    from sgtool.runs import select_runs
    from sgtool.store import runs_root

    root = runs_root(args.mnist_runs_dir)
    try:
        std = select_runs(root, None, {"dataset": "mnist", "trainer": "standard"})[0]
        sgt = select_runs(root, None, {"dataset": "mnist", "trainer": "sgt", "mask_frac": 0.5})[0]
    except SgtoolError as e:
        out.line(f"MNIST part skipped: {e}")
        return
    out.line(f"MNIST: standard {std['id']}, SGT(0.5) {sgt['id']}, first {cfg.limit or 'all'} test images")
    res = {"standard": mask_eval(std, cfg, on_progress=progress("standard", len(cfg.methods))),
           "SGT": mask_eval(sgt, cfg, on_progress=progress("SGT", len(cfg.methods)))}
    for label, r in res.items():
        out.line(f"  {label}: clean accuracy {r['clean_accuracy']:.4f}, n {r['rows'][0]['n']}"
                 f"{' (cached)' if r['cached'] else ''}, {r['path'].with_suffix('')}.*")
    out.line("\n  Grad: accuracy with that share of the most salient pixels removed (and random removal)")
    acc_table(out, res, ["grad", "random"], cfg.fractions)
    others = [m for m in cfg.methods if m not in ("grad", "random")]
    if others:
        out.line("\n  the other methods")
        acc_table(out, res, others, cfg.fractions)
    s = {label: {row["method"]: row for row in r["summary"]} for label, r in res.items()}
    out.line("\n  claims, per method (auc: area under the accuracy curve; smaller = more accuracy lost)")
    for m in cfg.methods:
        if m == "random":
            continue
        a_std, a_sgt = s["standard"][m]["auc"], s["SGT"][m]["auc"]
        v_std, v_sgt = s["standard"][m]["auc_vs_random"], s["SGT"][m]["auc_vs_random"]
        out.line(f"    {m:<13} 1. SGT loses more than standard: auc {a_sgt:.4f} vs {a_std:.4f} "
                 f"-> {verdict(a_sgt < a_std)};  2. both lose more than random: "
                 f"auc_vs_random standard {v_std:+.4f}, SGT {v_sgt:+.4f} -> {verdict(v_std < 0 and v_sgt < 0)}")
    if args.legacy:
        import dataclasses

        old = dataclasses.replace(cfg, output="logit", baseline="zero", ties="index")
        out.line("\n  sgtool 0.1's settings (--output logit --baseline zero --ties index) "
                 "against the defaults")
        prev = {"standard": mask_eval(std, old, on_progress=progress("standard 0.1", len(old.methods))),
                "SGT": mask_eval(sgt, old, on_progress=progress("SGT 0.1", len(old.methods)))}
        o = {label: {row["method"]: row for row in r["summary"]} for label, r in prev.items()}
        table = out.table(("method", "std 0.1", "std now", "SGT 0.1", "SGT now", "SGT < standard: 0.1 / now"),
                          fmt="    {:<13}{:>10}{:>10}{:>10}{:>10}   {}")
        for m in cfg.methods:
            a, b, c, d = o["standard"][m]["auc"], s["standard"][m]["auc"], o["SGT"][m]["auc"], s["SGT"][m]["auc"]
            table.row(m, *(f"{v:.4f}" for v in (a, b, c, d)),
                      "n/a" if m == "random" else f"{'yes' if c < a else 'no'} / {'yes' if d < b else 'no'}")


def synthetic_part(out, args, cfg) -> None:
    from sgtool.config import make_config
    from sgtool.evaluate import mask_eval
    from sgtool.store import find_run, runs_root
    from sgtool.train import train_run

    res = {}
    for label, trainer in (("standard", "standard"), ("SGT", "sgt")):
        tcfg = make_config(dataset="synthetic", trainer=trainer, epochs=args.epochs, runs_dir=args.runs_dir)
        t0 = time.perf_counter()
        tr = train_run(tcfg)
        how = "already trained" if tr["already"] else f"trained in {time.perf_counter() - t0:.0f} s"
        out.line(f"synthetic {label}: run {tr['id']}, {tcfg.epochs} epochs, "
                 f"test accuracy {tr['test_acc']:.4f} ({how})")
        run = find_run(runs_root(args.runs_dir), tr["id"])
        res[label] = mask_eval(run, cfg, on_progress=progress(label, len(cfg.methods)))
    out.line(f"\n  synthetic, first {cfg.limit or 'all'} test images: weighted saliency precision/recall "
             f"against the ground-truth pattern (AUP, AUR over p = 0.1..0.9) and precision at |GT|")
    table = out.table(("method", "AUP std", "AUP SGT", "AUR std", "AUR SGT", "P@GT std", "P@GT SGT",
                       "SGT AUP > standard AUP"), fmt="    {:<13}" + "{:>11}" * 6 + "   {}")
    s = {label: {row["method"]: row for row in r["summary"]} for label, r in res.items()}
    for m in cfg.methods:
        a, b = s["standard"][m], s["SGT"][m]
        table.row(m, *(f"{v:.4f}" for v in (a["aup"], b["aup"], a["aur"], b["aur"], a["precision_at_gt"],
                                            b["precision_at_gt"])),
                  "n/a: the same seeded ranking for both" if m == "random" else verdict(b["aup"] > a["aup"]))
    out.line("\n  synthetic accuracy curves")
    acc_table(out, res, cfg.methods, cfg.fractions)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mnist-runs-dir", default=None, help="where the MNIST runs are [SGTOOL_RUNS_DIR or ./runs]")
    ap.add_argument("--data-dir", default=None, help="where mnist/ is [SGTOOL_DATA_DIR or ./data]")
    ap.add_argument("--runs-dir", required=True, help="where the synthetic runs are trained (or found)")
    ap.add_argument("--limit", type=int, default=None, help="first N MNIST test images [all]")
    ap.add_argument("--synthetic-limit", type=int, default=None, help="first N synthetic test images [--limit]")
    ap.add_argument("--epochs", type=int, default=None, help="synthetic training epochs [dataset default]")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--skip-mnist", action="store_true")
    ap.add_argument("--methods", default=None, help="comma-separated saliency methods [mask-eval's 7 defaults]")
    ap.add_argument("--legacy", action="store_true",
                    help="also evaluate MNIST with sgtool 0.1's settings and print the AUCs side by side")
    add_markdown_argument(ap)
    args = ap.parse_args()
    out = Output()

    from sgtool.config import MaskEvalConfig, resolve_mask_eval

    methods = {} if args.methods is None else {"methods": tuple(args.methods.split(","))}
    t0 = time.perf_counter()
    if not args.skip_mnist:
        mnist_part(out, args, resolve_mask_eval(MaskEvalConfig(limit=args.limit, data_dir=args.data_dir,
                                                               device=args.device, **methods), "mnist"))
        out.line()
    synthetic_part(out, args, resolve_mask_eval(MaskEvalConfig(limit=args.synthetic_limit or args.limit,
                                                               device=args.device, **methods), "synthetic"))
    out.line(f"\ntotal {time.perf_counter() - t0:.0f} s")
    out.write(args.markdown, TITLE)


if __name__ == "__main__":
    main()

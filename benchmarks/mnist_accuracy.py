"""MNIST test accuracy of standard and SGT (mask-frac 0.5) training with the MNIST defaults
(mnist-cnn, Adadelta lr 1.0, StepLR γ 0.7, batch 64), through the run store.

    python benchmarks/mnist_accuracy.py --runs-dir runs-bench [--epochs 3] [--data-dir ../shared/data]

Prints the test accuracy after every epoch and checks the targets at epoch 3 (standard >= 98.6%,
SGT >= 98.4%). Every epoch reseeds from (seed, epoch) and StepLR does not depend on the total
epoch count, so epoch 3 of a 10-epoch run is the same model as a 3-epoch run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sgtool.config import config_hash, make_config
from sgtool.store import read_metrics, runs_root
from sgtool.train import train_run

# common.py is beside this file: importable also when the file is loaded by its path (the tests)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Output, add_markdown_argument  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TITLE = "MNIST test accuracy of standard and SGT training"
TARGETS = {"standard": 0.986, "sgt": 0.984}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", default="runs-bench")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    add_markdown_argument(ap)
    args = ap.parse_args()
    out = Output()
    results = {}
    stored = {}  # trainer -> epochs already in the store before this call: timed by an earlier one
    for trainer in ("standard", "sgt"):
        cfg = make_config(dataset="mnist", trainer=trainer, mask_frac=0.5, epochs=args.epochs, seed=args.seed,
                          runs_dir=args.runs_dir, data_dir=args.data_dir)
        stored[trainer] = len(read_metrics(runs_root(args.runs_dir) / config_hash(cfg)))
        res = train_run(cfg)
        rows = read_metrics(res["dir"])
        results[trainer] = rows
        out.line(f"{trainer:<9} run {res['id']} ({'cached' if res['already'] else 'trained'})")
    out.line()
    table = out.table(("epoch", "standard", "sgt", "std s/ep", "sgt s/ep"),
                      fmt="{:>5} {:>9} {:>9} {:>9} {:>9}")
    for i in range(args.epochs):
        s, g = results["standard"][i], results["sgt"][i]
        cells = [f"{i + 1}", f"{float(s['test_acc']):.4f}", f"{float(g['test_acc']):.4f}",
                 f"{float(s['seconds']):.1f}", f"{float(g['seconds']):.1f}"]
        # The page is stamped with this machine: seconds timed by an earlier call stay off it.
        page = cells[:3] + [c if i >= stored[t] else "-" for t, c in zip(("standard", "sgt"), cells[3:])]
        table.row(*cells, page=page)
    if any(stored.values()):
        out.note("s/ep -: an epoch trained by an earlier call, its seconds not timed in this one")
    if args.epochs >= 3:
        for trainer, target in TARGETS.items():
            acc = float(results[trainer][2]["test_acc"])
            out.line(f"{trainer} at epoch 3: {acc:.4f} (target >= {target}) "
                     f"{'OK' if acc >= target else 'MISSED'}")
    out.write(args.markdown, TITLE)


if __name__ == "__main__":
    main()

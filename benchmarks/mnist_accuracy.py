"""MNIST test accuracy of standard and SGT (mask-frac 0.5) training with the MNIST defaults
(mnist-cnn, Adadelta lr 1.0, StepLR γ 0.7, batch 64), through the run store.

    python benchmarks/mnist_accuracy.py --runs-dir runs-bench [--epochs 3] [--data-dir ../shared/data]

Prints the test accuracy after every epoch and checks the targets at epoch 3 (standard >= 98.6%,
SGT >= 98.4%). Every epoch reseeds from (seed, epoch) and StepLR does not depend on the total
epoch count, so epoch 3 of a 10-epoch run is the same model as a 3-epoch run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sgtool.config import make_config
from sgtool.store import read_metrics
from sgtool.train import train_run

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"standard": 0.986, "sgt": 0.984}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", default="runs-bench")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    results = {}
    for trainer in ("standard", "sgt"):
        cfg = make_config(dataset="mnist", trainer=trainer, mask_frac=0.5, epochs=args.epochs, seed=args.seed,
                          runs_dir=args.runs_dir, data_dir=args.data_dir)
        res = train_run(cfg)
        rows = read_metrics(res["dir"])
        results[trainer] = rows
        print(f"{trainer:<9} run {res['id']} ({'cached' if res['already'] else 'trained'})")
    print(f"\n{'epoch':>5} {'standard':>9} {'sgt':>9} {'std s/ep':>9} {'sgt s/ep':>9}")
    for i in range(args.epochs):
        s, g = results["standard"][i], results["sgt"][i]
        print(f"{i + 1:>5} {float(s['test_acc']):9.4f} {float(g['test_acc']):9.4f} "
              f"{float(s['seconds']):9.1f} {float(g['seconds']):9.1f}")
    if args.epochs >= 3:
        for trainer, target in TARGETS.items():
            acc = float(results[trainer][2]["test_acc"])
            print(f"{trainer} at epoch 3: {acc:.4f} (target >= {target}) {'OK' if acc >= target else 'MISSED'}")


if __name__ == "__main__":
    main()

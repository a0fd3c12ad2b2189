"""Seconds per training step on real MNIST, mnist-cnn, batch 512, CPU: standard vs SGT.

    python benchmarks/train_speed.py [--data-dir ../shared/data] [--repeats 11] [--steps 3]

Modes alternate within each repeat (standard, sgt eval, sgt shared, standard, ...) so that the
machine's noise hits them alike. The same train_step that `sgtool train` runs is timed here.
Three ratios to standard are printed, because a shared 2-core machine is noisy:
  ratio   median s/step over median standard s/step (all timed steps);
  paired  the median over repeats of each repeat's ratio: standard and the mode ran seconds
          apart, so a slow spell of the machine cancels out;
  best    fastest step over fastest standard step: the least disturbed figure.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from sgtool.config import make_config, mask_k
from sgtool.data import get_dataset, load
from sgtool.models import build
from sgtool.train import LOSSES, make_optimizer, train_step

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per mode per repeat")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    data = load("mnist", args.data_dir, train_size=args.batch_size * 8)
    modes = {
        "standard": make_config(dataset="mnist", trainer="standard", batch_size=args.batch_size),
        "sgt (eval)": make_config(dataset="mnist", trainer="sgt", mask_frac=0.5, batch_size=args.batch_size),
        "sgt (shared)": make_config(dataset="mnist", trainer="sgt", mask_frac=0.5, saliency_pass="shared",
                                    batch_size=args.batch_size),
    }
    k = mask_k(0.5, get_dataset("mnist").shape)
    state = {}
    for name, cfg in modes.items():
        torch.manual_seed(0)
        model = build(cfg.model, cfg.dataset).train()
        opt, _ = make_optimizer(cfg, model)
        state[name] = (model, opt, LOSSES[cfg.trainer], cfg)
    times: dict[str, list[list[float]]] = {m: [] for m in modes}  # [repeat][step] seconds
    batches = data.x_train.split(args.batch_size), data.y_train.split(args.batch_size)
    for model, opt, loss_fn, cfg in state.values():  # warm-up: one step each
        train_step(model, opt, loss_fn, batches[0][0], batches[1][0], cfg, k)
    for r in range(args.repeats):
        for name, (model, opt, loss_fn, cfg) in state.items():
            times[name].append([])
            for s in range(args.steps):
                i = (r * args.steps + s) % len(batches[0])
                t0 = time.perf_counter()
                train_step(model, opt, loss_fn, batches[0][i], batches[1][i], cfg, k)
                times[name][-1].append(time.perf_counter() - t0)
    flat = {name: [t for rep in reps for t in rep] for name, reps in times.items()}
    base, best = statistics.median(flat["standard"]), min(flat["standard"])
    print(f"MNIST mnist-cnn, batch {args.batch_size}, CPU, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; {args.repeats}x{args.steps} alternating steps")
    print(f"{'mode':<14} {'s/step':>8} {'min':>8} {'max':>8} {'ratio':>7} {'paired':>7} {'best':>7}")
    for name, ts in flat.items():
        med = statistics.median(ts)
        paired = statistics.median(statistics.median(r) / statistics.median(s)
                                   for r, s in zip(times[name], times["standard"]))
        print(f"{name:<14} {med:8.3f} {min(ts):8.3f} {max(ts):8.3f} {med / base:7.2f} {paired:7.2f} "
              f"{min(ts) / best:7.2f}")
    print("targets: sgt (eval) ratio <= 2.6, sgt (shared) ratio <= 2.3")


if __name__ == "__main__":
    main()

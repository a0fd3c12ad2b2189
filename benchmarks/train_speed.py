"""Seconds per training step on real MNIST, mnist-cnn, batch 512, CPU: standard vs SGT.

    python benchmarks/train_speed.py [--data-dir ../shared/data] [--repeats 11] [--steps 3]

Modes alternate within each repeat (standard, sgt eval, sgt shared, standard, ...) so that the
machine's noise hits them alike. The same train_step that `sgtool train` runs is timed here.
Three ratios to standard are printed, because a shared 2-core machine is noisy:
  ratio   median s/step over median standard s/step (all timed steps);
  paired  the median over repeats of each repeat's ratio: standard and the mode ran seconds
          apart, so a slow spell of the machine cancels out;
  best    fastest step over fastest standard step: the least disturbed figure.
The "floor" line is the least ratio a `shared` SGT step can reach with this saliency backward. Apart from
the optimiser step, an SGT step does all of a standard step twice (the clean and the masked branch,
forward and backward; the clean branch is not detached), and on top of that the saliency's input
gradient and the masking: floor = 2 + (saliency backward + masking - optimiser step) / standard.
Those three parts are timed on their own here, in each repeat, with the code the trainer runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from sgtool.process import tune_process

tune_process()  # as the `sgtool` command runs: before torch loads

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from sgtool.config import make_config  # noqa: E402
from sgtool.data import load  # noqa: E402
from sgtool.fastpath import label_grad, shared_forward  # noqa: E402
from sgtool.layout import lowest_k, mask  # noqa: E402
from sgtool.models import build  # noqa: E402
from sgtool.recipe import make_loss, make_optimizer  # noqa: E402
from sgtool.train import train_step  # noqa: E402

# common.py is beside this file: importable also when the file is loaded by its path (the tests)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Output, add_markdown_argument  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TITLE = "Seconds per training step on MNIST: standard vs SGT"


def extra_parts(model, opt, x, y, cfg) -> tuple[float, float, float]:
    """Seconds of (saliency backward, masking, optimiser step) on batch (x, y): the parts of a
    `shared` SGT step that are not twice a standard step's work. The forward and the loss's
    backward around them are not timed."""
    start, logits, to_input = shared_forward(model, x)  # (B, classes), train mode
    t0 = time.perf_counter()
    g = to_input(label_grad(logits, y, start))  # (B, C, H, W)
    t1 = time.perf_counter()
    score = g.abs().mean(1).flatten(1) if cfg.saliency_sign == "abs" else g.mean(1).flatten(1)  # (B, H*W)
    mask("image", x, lowest_k(score, cfg.mask_frac), cfg.mask_fill)
    t2 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(logits, y).backward(inputs=list(model.parameters()))
    t3 = time.perf_counter()
    opt.step()
    return t1 - t0, t2 - t1, time.perf_counter() - t3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per mode per repeat")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    add_markdown_argument(ap)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Output()

    data = load("mnist", args.data_dir, train_size=args.batch_size * 8)
    modes = {
        "standard": make_config(dataset="mnist", trainer="standard", batch_size=args.batch_size),
        "sgt (eval)": make_config(dataset="mnist", trainer="sgt", mask_frac=0.5, batch_size=args.batch_size),
        "sgt (shared)": make_config(dataset="mnist", trainer="sgt", mask_frac=0.5, saliency_pass="shared",
                                    batch_size=args.batch_size),
    }
    state = {}
    for name, cfg in modes.items():
        torch.manual_seed(0)
        model = build(cfg.model, cfg.dataset).train()
        opt, _ = make_optimizer(cfg, model)
        state[name] = (model, opt, make_loss(cfg))
    times: dict[str, list[list[float]]] = {m: [] for m in modes}  # [repeat][step] seconds
    torch.manual_seed(0)  # the floor's parts run on a model of their own, so the steps above are untouched
    floor_model = build("mnist-cnn", "mnist").train()
    floor_opt, _ = make_optimizer(modes["sgt (shared)"], floor_model)
    parts: list[tuple[float, float, float]] = []  # per repeat
    batches = data.x_train.split(args.batch_size), data.y_train.split(args.batch_size)
    for model, opt, loss_fn in state.values():  # warm-up: one step each
        train_step(model, opt, loss_fn, batches[0][0], batches[1][0])
    for r in range(args.repeats):
        for name, (model, opt, loss_fn) in state.items():
            times[name].append([])
            for s in range(args.steps):
                i = (r * args.steps + s) % len(batches[0])
                t0 = time.perf_counter()
                train_step(model, opt, loss_fn, batches[0][i], batches[1][i])
                times[name][-1].append(time.perf_counter() - t0)
        i = r % len(batches[0])
        parts.append(extra_parts(floor_model, floor_opt, batches[0][i], batches[1][i], modes["sgt (shared)"]))
    flat = {name: [t for rep in reps for t in rep] for name, reps in times.items()}
    base, best = statistics.median(flat["standard"]), min(flat["standard"])
    out.line(f"MNIST mnist-cnn, batch {args.batch_size}, CPU, {torch.get_num_threads()} threads, "
             f"torch {torch.__version__}; {args.repeats}x{args.steps} alternating steps")
    table = out.table(("mode", "s/step", "min", "max", "ratio", "paired", "best"),
                      fmt="{:<14} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7}")
    for name, ts in flat.items():
        med = statistics.median(ts)
        paired = statistics.median(statistics.median(r) / statistics.median(s)
                                   for r, s in zip(times[name], times["standard"]))
        table.row(name, f"{med:.3f}", f"{min(ts):.3f}", f"{max(ts):.3f}", f"{med / base:.2f}",
                  f"{paired:.2f}", f"{min(ts) / best:.2f}")
    sal, msk, opt_s = (statistics.median(p[j] for p in parts) for j in range(3))
    out.line(f"floor of sgt (shared): {2 + (sal + msk - opt_s) / base:.2f} = 2 + (saliency backward "
             f"{1e3 * sal:.1f} ms + masking {1e3 * msk:.1f} ms - optimiser step {1e3 * opt_s:.1f} ms) / "
             f"standard {1e3 * base:.1f} ms")
    out.line("targets: sgt (eval) ratio <= 2.6, sgt (shared) ratio <= 2.3")
    out.write(args.markdown, TITLE)


if __name__ == "__main__":
    main()

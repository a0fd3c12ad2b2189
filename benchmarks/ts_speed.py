"""Time-series speed on the CPU: time to accuracy, the SGT / standard step-time ratio, and the
mask-eval time of the benchmark's six methods plus random.

    python benchmarks/ts_speed.py [--runs-dir RUNS] [--repeats 7] [--steps 3]

1. A TCN trained with sgtool's defaults on tsb-middle-box (20 epochs, batch 50): seconds and test
   accuracy after each epoch (target: >= 95 % in under 3 minutes on 2 cores).
2. Seconds per training step, standard and SGT (mask-frac 0.5), for the TCN, the LSTM, the
   LSTM with input-cell attention and the Transformer at batch 50, alternating within each repeat so that the machine's noise hits both alike (target
   for the TCN: ratio <= 2.7). The ratio is the median SGT step over the median standard step;
   "paired" the median of per-repeat ratios. A run of the TSB defaults is 20 epochs of 20 such
   steps, which gives the estimate of the `tsb-sgt` grid's training time printed after them.
3. mask-eval of grad, ig, deeplift, gradshap, deepliftshap, smoothgrad and random on the 100 test
   series of the TCN run (target: under 60 s), per method.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sgtool.process import tune_process

tune_process()  # as the `sgtool` command runs: before torch loads

import torch  # noqa: E402

from sgtool import find_run, make_config, runs_root, train_run  # noqa: E402
from sgtool.config import MaskEvalConfig  # noqa: E402
from sgtool.data import load  # noqa: E402
from sgtool.evaluate import mask_eval  # noqa: E402
from sgtool.recipe import make_loss, make_optimizer  # noqa: E402
from sgtool.runs import build_model  # noqa: E402
from sgtool.store import read_metrics  # noqa: E402
from sgtool.train import train_step  # noqa: E402

# common.py is beside this file: importable also when the file is loaded by its path (the tests)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Output, add_markdown_argument  # noqa: E402

TITLE = "Time-series speed: time to accuracy, SGT / standard step time, mask-eval time"
METHODS = ("grad", "ig", "deeplift", "gradshap", "deepliftshap", "smoothgrad", "random")
ESTIMATE: dict[str, float] = {}


def step_ratio(table, model_name: str, repeats: int, steps: int, batch: int = 50) -> None:
    data = load("tsb-middle-box", train_size=batch * 8)
    state = {}
    for trainer in ("standard", "sgt"):
        cfg = make_config(dataset="tsb-middle-box", model=model_name, trainer=trainer, batch_size=batch)
        torch.manual_seed(0)
        model = build_model(cfg, data).train()
        opt, _ = make_optimizer(cfg, model)
        state[trainer] = (model, opt, make_loss(cfg, data))
    xs, ys = data.x_train.split(batch), data.y_train.split(batch)
    for model, opt, loss_fn in state.values():  # warm-up
        train_step(model, opt, loss_fn, xs[0], ys[0])
    times = {t: [] for t in state}
    for r in range(repeats):
        for trainer, (model, opt, loss_fn) in state.items():
            times[trainer].append([])
            for s in range(steps):
                i = (r * steps + s) % len(xs)
                t0 = time.perf_counter()
                train_step(model, opt, loss_fn, xs[i], ys[i])
                times[trainer][-1].append(time.perf_counter() - t0)
    flat = {t: [v for rep in reps for v in rep] for t, reps in times.items()}
    std, sgt = statistics.median(flat["standard"]), statistics.median(flat["sgt"])
    paired = statistics.median(statistics.median(a) / statistics.median(b)
                               for a, b in zip(times["sgt"], times["standard"]))
    table.row(model_name, f"{1e3 * std:.1f}", f"{1e3 * sgt:.1f}", f"{sgt / std:.2f}", f"{paired:.2f}")
    ESTIMATE[model_name] = std + sgt  # seconds of one standard and one SGT step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs-dir", default=None, help="where the TCN run goes [a temporary dir]")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=3)
    add_markdown_argument(ap)
    args = ap.parse_args()
    out = Output()
    out.line(f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}")

    with tempfile.TemporaryDirectory() as tmp:
        root = args.runs_dir or tmp
        out.line("\n1. TCN on tsb-middle-box, sgtool's defaults (standard training):")
        epochs = out.table(("epoch", "seconds (cumulative)", "test accuracy"),
                           fmt="  epoch {:>2}: {:>6} s, test accuracy {}", align="rrr", show_headers=False)
        cfg = make_config(dataset="tsb-middle-box", model="tcn", trainer="standard", runs_dir=root)
        t0 = time.perf_counter()
        res = train_run(cfg, force=True)
        wall = time.perf_counter() - t0
        elapsed = 0.0
        first = None
        for row in read_metrics(res["dir"]):
            elapsed += float(row["seconds"])
            acc = float(row["test_acc"])
            if first is None and acc >= 0.95:
                first = (int(row["epoch"]), elapsed)
            epochs.row(row["epoch"], f"{elapsed:.1f}", f"{acc:.3f}")
        reached = f">= 95 % first after epoch {first[0]}, {first[1]:.1f} s" if first else "never reached 95 %"
        out.line(f"  total {wall:.1f} s (with data generation and checkpoints); " + reached)

        out.line(f"\n2. seconds per step at batch 50, {args.repeats} x {args.steps} alternating steps:")
        steps = out.table(("model", "standard ms/step", "sgt ms/step", "ratio", "paired"),
                          fmt="  {:<11} standard {:>7} ms/step   sgt {:>7} ms/step   ratio {}   paired {}",
                          align="lrrrr", show_headers=False)
        for name in ("tcn", "lstm", "lstm-ica", "transformer"):
            step_ratio(steps, name, args.repeats, args.steps)

        out.line("  tsb-sgt (11 datasets x 3 seeds x the four models x standard and SGT), training alone, "
                 f"estimated from these steps: {sum(ESTIMATE.values()) * 20 * 20 * 33 / 3600:.1f} h ("
                 + ", ".join(f"{k} {v * 400 * 33 / 3600:.1f} h" for k, v in ESTIMATE.items()) + ")")

        run = find_run(runs_root(root), res["id"])
        t0 = time.perf_counter()
        ev = mask_eval(run, MaskEvalConfig(methods=METHODS), force=True)
        total = time.perf_counter() - t0
        ran = ev["config"]  # resolved: what the evaluation did
        out.line(f"\n3. mask-eval of the TCN run on the {ev['rows'][0]['n']} test series "
                 f"({len(ran.methods)} methods x {len(ran.fractions)} fractions, fill {ran.fill}):")
        methods = out.table(("method", "seconds"), fmt="  {:<13} {:>6} s", show_headers=False)
        for m, s in ev["seconds"].items():
            methods.row(m, f"{s:.1f}")
        out.line(f"  total {total:.1f} s (target: under 60 s)")
    out.write(args.markdown, TITLE)


if __name__ == "__main__":
    main()

"""PGD-40 throughput on mnist-cnn: sgtool.attacks.pgd against torchattacks.PGD in the same run.

Both attack the same batch of 512 images with the same weights (eval mode), eps 0.3, step 0.01,
40 steps, random start, each as its users run it: ours on the model as `sgtool attack` prepares
it (sgtool.freeze: parameters frozen, channels-last layout), torchattacks on the plain model.
torchattacks on the frozen model is timed too, as a same-model reference. Repeats alternate
between them so that load from other processes hits all alike; the figures are medians of
images per second. Importing sgtool tunes malloc for the whole process (sgtool.tune_malloc), so
torchattacks gets that too.
Real MNIST test images are used when --data-dir has them, else uniform noise (the speed of
an attack does not depend on the pixel values). The weights are a fresh seeded initialisation,
or a stored run's with --run-dir.

    python benchmarks/attack_speed.py --repeats 5 [--data-dir ../shared/data] [--threads 2]

OMP_WAIT_POLICY defaults to PASSIVE here (set it to ACTIVE to see the difference): with libgomp's
active waiting, on a machine with more busy processes than cores, every OpenMP fork-join spins
until its partner thread is scheduled again, and that waiting, not the attack, dominates the time
(3x slower for both implementations in our measurements). Both run under the same policy.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads libgomp

import torch  # noqa: E402

# common.py is beside this file: importable also when the file is loaded by its path (the tests)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Output, add_markdown_argument  # noqa: E402

TITLE = "PGD throughput on mnist-cnn: sgtool against torchattacks"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--step-size", type=float, default=0.01)
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    ap.add_argument("--run-dir", default=None, help="a stored mnist-cnn run to take the weights from")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--device", default="cpu")
    add_markdown_argument(ap)
    args = ap.parse_args()

    import torchattacks

    from sgtool.attacks import pgd
    from sgtool.data import load
    from sgtool.errors import SgtoolError
    from sgtool.models import build, freeze
    from sgtool.store import load_tensors

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Output()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = build("mnist-cnn", "mnist")
    if args.run_dir:
        model.load_state_dict(load_tensors(Path(args.run_dir) / "model.safetensors"))
    model = model.to(dev).eval()
    try:
        d = load("mnist", args.data_dir, train_size=1, test_size=args.batch_size)
        x, y, src = d.x_test, d.y_test, "MNIST test images"
    except SgtoolError:
        x = torch.rand(args.batch_size, 1, 28, 28)
        y = torch.randint(0, 10, (args.batch_size,))
        src = "uniform noise (no MNIST in --data-dir)"
    x, y = x.to(dev), y.to(dev)
    frozen = freeze(copy.deepcopy(model))
    theirs = torchattacks.PGD(model, eps=args.eps, alpha=args.step_size, steps=args.steps, random_start=True)
    theirs_frozen = torchattacks.PGD(frozen, eps=args.eps, alpha=args.step_size, steps=args.steps, random_start=True)
    gen = torch.Generator(dev).manual_seed(0)
    ours = lambda: pgd(frozen, x, y, args.eps, steps=args.steps, step_size=args.step_size, generator=gen)  # noqa: E731

    def timed(fn) -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return len(x) / (time.perf_counter() - t0)

    runs = {"sgtool": ours, "torchattacks": lambda: theirs(x, y),
            "torchattacks, frozen model": lambda: theirs_frozen(x, y)}
    for fn in runs.values():  # warm-up
        fn()
    rates = {k: [] for k in runs}
    for _ in range(args.repeats):
        for k, fn in runs.items():
            rates[k].append(timed(fn))
    med = {k: statistics.median(v) for k, v in rates.items()}
    out.line(f"PGD-{args.steps} on mnist-cnn, batch {len(x)} ({src}), device {dev}, "
             f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
             f"{args.repeats} alternating repeats (medians)")
    table = out.table(("attack", "images/s", "every repeat"), fmt="  {:<27} {:>9} images/s   (all: {})",
                      show_headers=False)
    for k, v in med.items():
        table.row(k, f"{v:.1f}", ", ".join(f"{r:.1f}" for r in rates[k]))
    out.line(f"  ratio sgtool/torchattacks: {med['sgtool'] / med['torchattacks']:.3f} (target >= 1.0); "
             f"on the same frozen model: {med['sgtool'] / med['torchattacks, frozen model']:.3f}")
    out.write(args.markdown, TITLE)


if __name__ == "__main__":
    main()

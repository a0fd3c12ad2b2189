"""mask-eval speed on MNIST: the default 7 methods x 10 fractions on the CPU, and an estimate of
the authors' procedure (batch 20, every map recomputed for every fraction).

The run evaluated is the MNIST standard run of --runs-dir (found by its training config,
`--dataset mnist --trainer standard`), or --run ID. It is copied into a temporary runs dir
first, so the timing is never served from the cache and the store is left untouched.

Our figure is measured: one `mask_eval` call over the first --limit test images (all 10,000 by
default), with the time of each method. The authors' figure is an ESTIMATE: on a small sample
(--sample images, batch 20) we time, per method, one attribution pass, one per-sample masking
loop like theirs and one forward pass, and scale them to their procedure (for each of the 10
fractions: maps and masks for fractions > 0, then a forward pass) and to the full test set.
It uses our method settings (their DeepLiftShap drew 5 x batch baselines per input, which
would cost far more) and leaves out their data loading, so it is an underestimate.

    python benchmarks/mask_eval_speed.py --runs-dir /work/bench-runs --data-dir ../shared/data [--limit 500]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

# common.py is beside this file: importable also when the file is loaded by its path (the tests)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Output, add_markdown_argument  # noqa: E402

TITLE = "mask-eval speed on MNIST, and an estimate of the authors' procedure"
N_FULL = 10_000


def authors_estimate(model, x, y, methods, fractions, fill, batch=20) -> dict[str, float]:
    """Seconds per method for the authors' procedure on len(x) images, measured once per piece."""
    from sgtool.config import mask_k
    from sgtool.layout import IMAGE_FILLS
    from sgtool.saliency import get_saliency, position_score

    out = {}
    for name in methods:
        fn = get_saliency(name)
        t_attr = t_mask = t_fwd = 0.0
        for s in range(0, len(x), batch):
            xb, yb = x[s : s + batch], y[s : s + batch]
            t0 = time.perf_counter()
            score = position_score(fn(model, xb, yb, seed=s).detach())  # (B, H, W)
            t1 = time.perf_counter()
            # Their masking: one sample at a time (topk, then fill), as in their Helper.py.
            k = mask_k(0.5, xb.shape[1:])
            xm = xb.clone()
            fills = IMAGE_FILLS[fill](xb, None, None, None)
            for i in range(len(xb)):
                idx = score[i].flatten().topk(k).indices
                xm[i].view(xb.shape[1], -1)[:, idx] = fills[i].view(xb.shape[1], -1)[:, idx]
            t2 = time.perf_counter()
            with torch.no_grad():
                model(xm).argmax(1)
            t3 = time.perf_counter()
            t_attr, t_mask, t_fwd = t_attr + t1 - t0, t_mask + t2 - t1, t_fwd + t3 - t2
        if name == "random":
            t_attr = 0.0  # their random masks need no map (the mask loop is still timed)
        removing = sum(f > 0 for f in fractions)
        out[name] = removing * (t_attr + t_mask) + len(fractions) * t_fwd
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs-dir", default=None, help="where the MNIST runs are [SGTOOL_RUNS_DIR or ./runs]")
    ap.add_argument("--data-dir", default=None, help="where mnist/ is [SGTOOL_DATA_DIR or ./data]")
    ap.add_argument("--run", default=None, help="run id (prefix) instead of the MNIST standard run")
    ap.add_argument("--limit", type=int, default=None, help="first N test images [all 10,000]")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--sample", type=int, default=100, help="images timed for the authors' estimate")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    add_markdown_argument(ap)
    args = ap.parse_args()

    from sgtool.config import MaskEvalConfig, resolve_mask_eval
    from sgtool.data import load
    from sgtool.evaluate import mask_eval
    from sgtool.runs import load_model, select_runs
    from sgtool.store import find_run, runs_root

    torch.set_num_threads(args.threads)
    out = Output()
    root = runs_root(args.runs_dir)
    flags = {"dataset": "mnist", "trainer": "standard"}
    (run,) = select_runs(root, [args.run] if args.run else None, flags)
    cfg = resolve_mask_eval(MaskEvalConfig(limit=args.limit, batch_size=args.batch_size, data_dir=args.data_dir,
                                           device="cpu"), "mnist")
    trained = run["config"]
    out.line(f"run {run['id']} ({trained['dataset']} / {trained['model']} / {trained['trainer']}), "
             f"{len(cfg.methods)} methods x {len(cfg.fractions)} fractions, batch {cfg.batch_size}, "
             f"cpu, {torch.get_num_threads()} threads")

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / run["id"]
        shutil.copytree(run["dir"], copy, ignore=shutil.ignore_patterns("checkpoint*", "mask_eval", "attack", "lock"))
        t0 = time.perf_counter()
        res = mask_eval(find_run(Path(tmp), run["id"]), cfg, force=True)
        total = time.perf_counter() - t0
    n = res["rows"][0]["n"]
    out.line(f"\nsgtool mask-eval, measured on {n} images:")
    measured = out.table(("method", "seconds", "note"), fmt="  {:<14} {:>8} s  {}", show_headers=False)
    for m, s in res["seconds"].items():
        measured.row(m, f"{s:.1f}")
    measured.row("total", f"{total:.1f}",
                 f"({n / total:.1f} images/s; includes data loading and the shared passes)")
    if n < N_FULL:
        out.line(f"  projected to {N_FULL:,} images (x {N_FULL / n:g}, linear): "
                 f"{total * N_FULL / n / 60:.1f} min")

    model, tcfg = load_model(run, "cpu")
    model.requires_grad_(False)
    data = load("mnist", args.data_dir or tcfg.data_dir, train_size=1, test_size=args.sample)
    per = authors_estimate(model, data.x_test, data.y_test, cfg.methods, cfg.fractions, cfg.fill)
    scale = N_FULL / len(data.x_test)
    out.line(f"\nauthors' procedure (batch 20, maps recomputed for each fraction), ESTIMATED for "
             f"{N_FULL:,} images from a measurement on {len(data.x_test)} images (x {scale:g}):")
    estimated = out.table(("method", "minutes (estimated)", "note"), fmt="  {:<14} {:>8} min  {}",
                          show_headers=False)
    for m, s in per.items():
        estimated.row(m, f"{s * scale / 60:.1f}")
    est = sum(per.values()) * scale
    estimated.row("total", f"{est / 60:.1f}", f"(= {est / 3600:.2f} h)")
    ours = total * N_FULL / n
    out.line(f"\nspeed-up, estimate / {'measured' if n >= N_FULL else 'projected'} sgtool time: "
             f"{est / ours:.1f}x")
    out.write(args.markdown, TITLE)


if __name__ == "__main__":
    main()

"""The same 2-cell sweep run inline (one process) and through submitit's local executor (two jobs
at once): wall time of each, and whether the results are identical.

    python benchmarks/sweep_executors.py [--epochs 2] [--train-size 800]

Each sweep runs as the `sgtool sweep` command in a fresh runs dir: synthetic images, standard and
SGT (small-cnn), then mask-eval (grad, random) and FGSM of each run. Identical means: the same run
ids, the same metrics.csv rows apart from the seconds column, byte-identical weights, and the same
evaluation CSVs. Needs submitit (`pip install 'sgtool[cluster]'`).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# common.py is beside this file: importable also when the file is loaded by its path (the tests)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Output, add_markdown_argument  # noqa: E402

TITLE = "A 2-cell sweep inline and through submitit's local executor: wall time, identical results"
EXPERIMENT = """two-cells:
  train:
    dataset: synthetic
    trainer: [standard, sgt]
    epochs: {epochs}
    train_size: {train_size}
    test_size: 300
  mask_eval:
    methods: [grad, random]
    limit: 200
  attack:
    methods: [fgsm]
    eps: [0.1]
    limit: 200
"""


def digest(root: Path) -> dict:
    """What must agree between the two stores: per run, the metrics without seconds, the weights'
    sha256 and the evaluation CSVs' sha256."""
    out = {}
    for run in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        with open(run / "metrics.csv") as f:
            rows = [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]
        files = {p.relative_to(run).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                 for p in sorted(run.rglob("*")) if p.suffix == ".csv" and p.name != "metrics.csv"}
        files["model.safetensors"] = hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
        out[run.name] = (rows, files)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-size", type=int, default=800)
    add_markdown_argument(ap)
    args = ap.parse_args()
    out = Output()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        yaml = tmp / "experiments.yaml"
        yaml.write_text(EXPERIMENT.format(epochs=args.epochs, train_size=args.train_size))
        wall, stores = {}, {}
        for name, extra in (("inline", []), ("local", ["--executor", "local", "--jobs", "2"])):
            stores[name] = tmp / name
            cmd = [sys.executable, "-m", "sgtool", "sweep", str(yaml), "--runs-dir", str(stores[name]), *extra]
            t0 = time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, text=True)
            wall[name] = time.perf_counter() - t0
            if res.returncode != 0:
                sys.exit(f"{name} sweep failed:\n{res.stdout}\n{res.stderr}")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        out.line(f"2-cell sweep (synthetic, standard + SGT, {args.epochs} epochs of {args.train_size}; "
                 f"mask-eval and FGSM), {cores} CPU cores:")
        table = out.table(("executor", "seconds (wall)"), fmt="  {:<7} {:>6} s wall", show_headers=False)
        for name in wall:
            table.row(name, f"{wall[name]:.1f}")
        a, b = digest(stores["inline"]), digest(stores["local"])
        same = a == b and len(a) == 2
        out.line("  results identical (run ids, metrics, weights, evaluation CSVs): "
                 + ("yes" if same else "NO"))
        if not same:
            for rid in sorted(set(a) | set(b)):
                if a.get(rid) != b.get(rid):
                    out.line(f"    differs: {rid}")
    out.write(args.markdown, TITLE)


if __name__ == "__main__":
    main()

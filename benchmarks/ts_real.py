"""Standard vs SGT test accuracy on real series: sequential MNIST (TCN and LSTM) and the UEA
BasicMotions and JapaneseVowels sets, with sgtool's defaults for each dataset.

    python benchmarks/ts_real.py --data-dir ../shared/data --runs-dir RUNS [--epochs N] [--seeds 0]

Runs are trained into RUNS (or found there, already trained), so a second call only prints.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sgtool.process import tune_process

tune_process()

from sgtool import make_config, train_run  # noqa: E402
from sgtool.errors import SgtoolError  # noqa: E402

# common.py is beside this file: importable also when the file is loaded by its path (the tests)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Output, add_markdown_argument  # noqa: E402

TITLE = "Standard vs SGT test accuracy on real series"

CASES = [("mnist-seq", "tcn"), ("mnist-seq", "lstm"), ("uea-basic-motions", "tcn"), ("uea-basic-motions", "lstm"),
         ("uea-japanese-vowels", "tcn"), ("uea-japanese-vowels", "lstm")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--runs-dir", required=True)
    ap.add_argument("--epochs", type=int, default=None, help="[per dataset default]")
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds")
    ap.add_argument("--only", default=None, help="comma-separated datasets")
    add_markdown_argument(ap)
    args = ap.parse_args()
    out = Output()
    seeds = [int(s) for s in args.seeds.split(",")]
    cases = [c for c in CASES if not args.only or c[0] in args.only.split(",")]
    table = out.table(("dataset", "model", "seed", "epochs", "standard", "sgt", "std s", "sgt s"),
                      fmt="{:<20} {:<6} {:>4} {:>6} {:>9} {:>9} {:>7} {:>7}")
    for dataset, model in cases:
        for seed in seeds:
            acc, secs = {}, {}
            try:
                for trainer in ("standard", "sgt"):
                    cfg = make_config(dataset=dataset, model=model, trainer=trainer, seed=seed, epochs=args.epochs,
                                      data_dir=args.data_dir, runs_dir=args.runs_dir)
                    t0 = time.perf_counter()
                    res = train_run(cfg)
                    acc[trainer], secs[trainer] = res["test_acc"], time.perf_counter() - t0
            except SgtoolError as e:
                table.row(dataset, model, f"skipped: {e}", fmt="{:<20} {:<6} {}")
                break
            table.row(dataset, model, seed, cfg.epochs, f"{acc['standard']:.4f}", f"{acc['sgt']:.4f}",
                      f"{secs['standard']:.0f}", f"{secs['sgt']:.0f}")
    out.line("seconds: training time in this call (0: found already trained)")
    out.write(args.markdown, TITLE)


if __name__ == "__main__":
    main()

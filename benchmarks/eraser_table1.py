"""The SGT paper's Table 1 on ERASER Movie Reviews, beside the published one: comprehensiveness
(higher is better) and sufficiency (lower is better) of Gradient, Integrated Gradients and
SmoothGrad for a BiLSTM trained traditionally and with saliency guided training, and random.

    python benchmarks/eraser_table1.py --data-dir DATA --runs-dir RUNS [--seeds 0,1,2]
                                       [--epochs N] [--select S] [--oov R] [--embed-dropout P]
                                       [--speed]
                                       [--report-only] [--accuracy-only]

1. Every (trainer, seed) run is trained into RUNS with sgtool's eraser-movies defaults and the
   GloVe subset (--embeddings), then ERASER-evaluated on the 199 test documents (grad, ig,
   smoothgrad, random; AOPC over 1, 5, 10, 20, 50 %), or found already done there, so the script
   can be stopped and rerun. Test accuracy of each run, and the evaluation's seconds per method.
2. The table: mean (± std over seeds) beside the paper, and the claim checked - under SGT
   comprehensiveness rises and sufficiency falls, for all three methods (6 cells). Then SGT's
   test accuracy minus standard's, paired document by document within each seed, with 95 %
   bootstrap intervals: over the 199 documents alone, and over seeds and documents together.
3. --speed: one epoch of standard and one of SGT training on Movies, side by side: the same
   batches in the same order, each batch stepped by both models in turn (alternating which
   goes first), so that the machine's noise hits both alike. Prints each epoch's seconds and
   the ratio (target <= 2.7 on 2 cores).
--accuracy-only skips the ERASER evaluation and the table: the runs' accuracies alone.
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

from sgtool import config_hash, find_run, make_config, runs_root, train_run  # noqa: E402
from sgtool.config import MaskEvalConfig  # noqa: E402
from sgtool.data.text import ERASER_DEFAULTS  # noqa: E402
from sgtool.evaluate import mask_eval  # noqa: E402
from sgtool.recipe import make_loss, make_optimizer  # noqa: E402
from sgtool.runs import build_model, load_data, load_model, split_scores, trim  # noqa: E402
from sgtool.train import bucketed, train_step  # noqa: E402

# common.py is beside this file: importable also when the file is loaded by its path (the tests)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Output, add_markdown_argument  # noqa: E402

TITLE = "Table 1 on ERASER Movie Reviews: comprehensiveness and sufficiency, standard vs SGT"

METHODS = ("grad", "ig", "smoothgrad")
LABELS = {"grad": "Grad", "ig": "IG", "smoothgrad": "SmoothGrad", "random": "Random"}
# Published Movies values, traditional / saliency guided (the SGT paper's Table 1); random: one value.
PAPER = {"comprehensiveness": {"grad": (.200, .240), "ig": (.265, .306), "smoothgrad": (.198, .256), "random": .056},
         "sufficiency": {"grad": (.042, .013), "ig": (.054, .002), "smoothgrad": (.034, .008), "random": .294}}
GLOVE = "glove/glove.6B.50d.top50k.txt.gz"


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    m = statistics.mean(values)
    return f"{m:.3f}" + (f"±{statistics.stdev(values):.3f}" if len(values) > 1 else "")


def paired_interval(diff: torch.Tensor, seeds_too: bool = False, draws: int = 10_000, seed: int = 0):
    """The 95 % bootstrap interval of diff.mean(), diff (S seeds, N documents) holding SGT's minus
    standard's correctness (-1, 0, +1) per test document. Every draw resamples the N documents,
    the same ones for every seed (the seeds share one test set); with seeds_too it also resamples
    the S seeds, so the interval counts how much a retrained pair moves as well."""
    g = torch.Generator().manual_seed(seed)
    n_seeds, n_docs = diff.shape
    docs = torch.randint(n_docs, (draws, n_docs), generator=g)                # (draws, N)
    per_seed = diff.float()[:, docs].mean(2).T                               # (draws, S)
    if seeds_too:
        per_seed = per_seed.gather(1, torch.randint(n_seeds, (draws, n_seeds), generator=g))
    lo, hi = torch.quantile(per_seed.mean(1), torch.tensor([0.025, 0.975])).tolist()
    return lo, hi


def paired_accuracy(out, correct: dict[int, dict[str, torch.Tensor]]) -> None:
    """Print SGT's test accuracy minus standard's, seed by seed and over seeds, with intervals."""
    seeds = [s for s in sorted(correct) if len(correct[s]) == 2]
    if not seeds:
        return
    diff = torch.stack([correct[s]["sgt"].float() - correct[s]["standard"].float() for s in seeds])  # (S, N)
    out.line(f"\n  test accuracy, SGT minus standard, paired on the {diff.shape[1]} test documents:")
    for s, d in zip(seeds, diff):
        out.line(f"    seed {s}: {d.mean():+.3f}  (right only under standard: {int((d < 0).sum())}, "
                 f"only under SGT: {int((d > 0).sum())})")
    docs, both = paired_interval(diff), paired_interval(diff, seeds_too=True)
    out.line(f"    mean {diff.mean():+.3f}; 95 % bootstrap interval over documents "
             f"[{docs[0]:+.3f}, {docs[1]:+.3f}],\n    over seeds and documents "
             f"[{both[0]:+.3f}, {both[1]:+.3f}] (target: >= -0.010)")


def speed(out, args) -> None:
    """Seconds of one epoch of standard and of SGT training, measured side by side."""
    cfgs = {t: make_config(dataset="eraser-movies", trainer=t, embeddings=args.embeddings, data_dir=args.data_dir,
                           epochs=args.epochs, embed_dropout=args.embed_dropout) for t in ("standard", "sgt")}
    data = load_data(cfgs["standard"], data_dir=args.data_dir)
    state = {}
    for t, cfg in cfgs.items():
        torch.manual_seed(0)
        model = build_model(cfg, data).train()
        opt, _ = make_optimizer(cfg, model)
        state[t] = (model, opt, make_loss(cfg, data))
    bs, pad = cfgs["standard"].batch_size, state["standard"][0].pad_id
    x, y, v = data.x_train, data.y_train, data.valid_train
    torch.manual_seed(1)
    perm = bucketed(torch.randperm(len(x)), (x != pad).sum(1), bs)
    seconds = {t: 0.0 for t in state}
    steps = perm.split(bs)
    out.line(f"\n3. one epoch of Movies ({len(x)} documents, {len(steps)} batches of {bs}),\n"
             f"   standard and SGT alternating per batch:")
    t_all = time.perf_counter()
    for i, idx in enumerate(steps):
        xb = trim(x[idx], pad)
        vb = v[idx][:, : xb.shape[1]]
        for t in (("standard", "sgt") if i % 2 == 0 else ("sgt", "standard")):
            model, opt, loss_fn = state[t]
            t0 = time.perf_counter()
            train_step(model, opt, loss_fn, xb, y[idx], vb)
            seconds[t] += time.perf_counter() - t0
    out.line(f"  standard {seconds['standard']:6.1f} s/epoch   sgt {seconds['sgt']:6.1f} s/epoch   "
             f"[{time.perf_counter() - t_all:.0f} s wall]")
    out.line(f"  ratio {seconds['sgt'] / seconds['standard']:.2f} (target <= 2.7)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True, help="holds eraser/movies.tar.gz and the GloVe subset")
    ap.add_argument("--runs-dir", required=True)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--epochs", type=int, default=None, help="[the dataset's default]")
    ap.add_argument("--select", default=None,
                    help="the epoch each run keeps: [the dataset's default, val-loss], or val (the table of sgtool "
                         "before --select val-loss)")
    ap.add_argument("--embeddings", default=GLOVE, help=f"[{GLOVE}, under --data-dir]")
    ap.add_argument("--oov", default=None, help="the vectors of words the file lacks: [random] or unk")
    ap.add_argument("--embed-dropout", type=float, default=None,
                    help="dropout on the word vectors in training: [the dataset's default, 0.2, as ERASER's "
                         "baseline], or 0 (the table of sgtool before that default)")
    ap.add_argument("--accuracy-only", action="store_true", help="no ERASER evaluation: accuracy alone")
    ap.add_argument("--speed", action="store_true", help="also time an epoch of each, side by side")
    ap.add_argument("--report-only", action="store_true", help="train nothing; print what RUNS holds")
    add_markdown_argument(ap)
    args = ap.parse_args()
    out = Output()
    seeds = [int(s) for s in args.seeds.split(",")]
    root = runs_root(args.runs_dir)
    ecfg = MaskEvalConfig(methods=(*METHODS, "random"))
    out.line(f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}; "
             f"embeddings {args.embeddings}")
    drop = ERASER_DEFAULTS["embed_dropout"] if args.embed_dropout is None else args.embed_dropout
    out.line(f"\n1. runs (eraser-movies, BiLSTM, mask-frac 0.5 for SGT, "
             f"--select {args.select or ERASER_DEFAULTS['select']},\n"
             f"   --oov {args.oov or 'random'}, --embed-dropout {drop}):")
    # vals[(metric, method, trainer)] = one value per seed
    vals: dict[tuple, list[float]] = {}
    acc: dict[str, list[float]] = {}
    correct: dict[int, dict[str, torch.Tensor]] = {}  # seed -> trainer -> (N,) right on each test document
    data = None
    for seed in seeds:
        for trainer in ("standard", "sgt"):
            cfg = make_config(dataset="eraser-movies", trainer=trainer, seed=seed, epochs=args.epochs, select=args.select,
                              embeddings=args.embeddings, oov=args.oov, embed_dropout=args.embed_dropout,
                              data_dir=args.data_dir, runs_dir=args.runs_dir)
            if args.report_only and not (root / config_hash(cfg) / "model.safetensors").is_file():
                continue
            t0 = time.perf_counter()
            res = train_run(cfg)
            train_s = time.perf_counter() - t0
            run = find_run(root, res["id"])
            ev = None if args.accuracy_only else mask_eval(run, ecfg)
            acc.setdefault(trainer, []).append(res["test_acc"])
            data = data if data is not None else load_data(cfg)  # one vocabulary: the runs share it
            model, _ = load_model(run, data=data)
            correct.setdefault(seed, {})[trainer] = split_scores(model, data.x_test, data.y_test)["correct"]
            # metrics.csv keeps 6 decimals: a different model is off by a whole document (1/199)
            if abs(correct[seed][trainer].float().mean().item() - res["test_acc"]) > 0.5 / len(data.y_test):
                out.line(f"    warning: the stored model scores {correct[seed][trainer].float().mean():.3f}, "
                         f"not the {res['test_acc']:.3f} its run recorded")
            out.line(f"  {trainer:<8} seed {seed}: run {res['id']}, test accuracy {res['test_acc']:.3f}"
                     + ("" if res["already"] else f", trained in {train_s:.0f} s"))
            if ev is None:
                continue
            for r in ev["summary"]:
                for metric in ("comprehensiveness", "sufficiency"):
                    vals.setdefault((metric, r["method"], trainer), []).append(float(r[metric]))
            secs = " ".join(f"{m} {s:.0f}" for m, s in ev["seconds"].items())
            # A stored evaluation's seconds were timed by an earlier call, maybe on another machine
            # than the one the page names.
            stored = f"{trainer} seed {seed}: ERASER evaluation stored, not timed in this call"
            out.line(f"    ERASER seconds{' (stored)' if ev['cached'] else ''}: {secs}; "
                     f"total {sum(ev['seconds'].values()):.0f}", page=stored if ev["cached"] else True)

    agree, total = 0, 0
    if args.accuracy_only:
        out.line(f"\n2. Movies, test accuracy over seeds {','.join(map(str, seeds))}:")
    else:
        out.line(f"\n2. Movies, AOPC over 1/5/10/20/50 %, mean ± std over seeds {','.join(map(str, seeds))}:")
        out.line("   sgtool's standard / SGT beside the paper's traditional / saliency guided;")
        out.line("   better?: does SGT beat standard, in ours / in the paper's")
        table = out.table(("", "standard", "SGT", "paper", "better?"),
                          fmt="  {:<18} {:>12} {:>12}   {:>11}   {}")
    for metric, better in (() if args.accuracy_only else (("comprehensiveness", 1), ("sufficiency", -1))):
        arrow = "↑" if better > 0 else "↓"
        for m in (*METHODS, "random"):
            std, sgt = vals.get((metric, m, "standard"), []), vals.get((metric, m, "sgt"), [])
            paper = PAPER[metric][m]
            label = f"{metric[:4]}{arrow} {LABELS[m]}"
            if m == "random":
                table.row(label, fmt(std), fmt(sgt), f"{paper:.3f}")
                continue
            ours = bool(std and sgt) and better * (statistics.mean(sgt) - statistics.mean(std)) > 0
            if std and sgt:
                total += 1
                agree += ours
            verdict = ("yes" if ours else "no") if std and sgt else "-"  # "-": a trainer has no run yet
            table.row(label, fmt(std), fmt(sgt), f"{paper[0]:.3f}/{paper[1]:.3f}", f"{verdict:>3} / yes")
    targets = {"standard": ">= 0.85", "sgt": "within 0.01 of standard"}
    for t in ("standard", "sgt"):
        if acc.get(t):
            out.line(f"  test accuracy {t + ':':<9} {fmt(acc[t])} (target: {targets[t]})")
    paired_accuracy(out, correct)
    if total:
        out.line(f"\nThe paper's claim (under SGT comprehensiveness rises and sufficiency falls, for\n"
                 f"Grad, IG and SmoothGrad) holds for {agree} of {total} cells.")
    if args.speed:
        speed(out, args)
    out.write(args.markdown, TITLE)


if __name__ == "__main__":
    main()

"""mask-eval: does a model's saliency point at the features it uses? For every saliency method,
the accuracy as the most (or least) salient features are removed, deletion and insertion AUC,
and, where the data has ground truth, weighted saliency precision and recall. Images and series
(layout.py says what a feature is); text runs get ERASER's metrics (eraser.py) instead.

Each method's saliency is computed once per sample and ranked once (layout.removal_rank):
removing the first k features of that ranking is `rank < k`, so the masks of every fraction are
nested and share one ranking. The authors' script recomputed every map for every fraction.

Deletion and insertion (Petsiuk et al. 2018) follow the class probability of the target as the
most salient features are removed (deletion: replaced by the fill) or revealed on a canvas of
the fill (insertion), at DI_STEPS + 1 points: 0 %, 10 %, ..., 100 % of the features. Ten steps
of 10 % keep them cheap: with the default fractions the deletion points are exactly the accuracy
curve's inputs, so every masked batch is passed through the model once (`_Passes` below) and
only insertion adds passes.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from .. import distributed as ddp
from ..config import MaskEvalConfig
from ..layout import LAYOUTS, n_masked, removal_rank, valid_count
from ..saliency import explain_setup, get_saliency, rnn_safe
from .eraser import compute as eraser_compute
from .ground_truth import GT_LEVELS, precision_at_gt, saliency_precision_recall, series_metrics, trapezoid
from .pipeline import ROWS, SUMMARY, Context, Evaluation, Output, evaluate

DI_STEPS = 10


def _seed(seed: int, batch: int, stream: int) -> int:
    """Per-batch seeds: stream 0 draws the fill, stream 1 the saliency method's randomness
    (kept apart so that a random fill and the random ranking are not the same numbers)."""
    return (seed * 1_000_003 + batch) * 2 + stream


def _fill(lay, x: torch.Tensor, cfg: MaskEvalConfig, batch: int, ctx: dict) -> torch.Tensor:
    """The replacement values of one batch (on the CPU, seeded), shared by every method."""
    gen = torch.Generator().manual_seed(_seed(cfg.seed, batch, 0))
    return lay.fills[cfg.fill](x, None, gen, ctx)


@torch.no_grad()
def _probs(model, x: torch.Tensor) -> torch.Tensor:
    return F.softmax(model(x), dim=1).cpu()  # (B, classes)


class _Passes:
    """Class probabilities of one batch with some of its features removed, each distinct
    removal passed through the model once. A removal is (end, m): each sample's m most salient
    features ("top") or its m least salient valid ones ("bottom"); m is an int, or a (B,) tensor
    where samples have different numbers of valid features. No removal is the clean batch, and
    removing every feature of a batch without padding is the all-filled batch: both are computed
    once for all methods."""

    def __init__(self, model, x, fill, rank, nvalid, clean_p, filled_p):
        self.model, self.x, self.fill, self.rank = model, x, fill, rank  # rank: shaped to broadcast on x
        self.nvalid = nvalid  # None: every feature is valid; else (B,) valid counts
        self.n = rank[0].numel()
        self.clean_p, self.filled_p = clean_p, filled_p
        self.cache = {}

    def __call__(self, end: str, m) -> torch.Tensor:
        key = (end, m if isinstance(m, int) else tuple(m.tolist()))
        if (m == 0 if isinstance(m, int) else bool((m == 0).all())):
            return self.clean_p
        if self.nvalid is None and isinstance(m, int) and m == self.n:
            return self.filled_p
        if key not in self.cache:
            per_sample = lambda t: t.view(-1, *[1] * (self.rank.dim() - 1))  # noqa: E731 (B,) -> like rank
            if not isinstance(m, int):
                m = per_sample(m)
            if end == "top":
                mask = self.rank < m
            else:
                nv = self.n if self.nvalid is None else per_sample(self.nvalid)
                mask = (self.rank >= nv - m) & (self.rank < nv)
            self.cache[key] = _probs(self.model, torch.where(mask.to(self.x.device), self.fill, self.x))
        return self.cache[key]


def compute(ctx: Context) -> Output:
    """Accuracy of a stored run's model as its most (order morf) or least (lerf) salient
    features are removed, for every saliency method and fraction of cfg; plus deletion and
    insertion AUC, and, where the dataset has ground truth, weighted saliency precision/recall.
    A text run gets ERASER's comprehensiveness, sufficiency and plausibility (eraser.py)."""
    if ctx.spec.layout == "tokens":
        return eraser_compute(ctx)
    cfg, spec, data, model, device, lead = ctx.cfg, ctx.spec, ctx.data, ctx.model, ctx.device, ctx.lead
    on_progress, run = ctx.on_progress, ctx.run
    lay = LAYOUTS[spec.layout]
    n = len(data.x_test) if cfg.limit is None else min(cfg.limit, len(data.x_test))
    x, y = data.x_test[:n], data.y_test[:n]  # (n, ...), (n,)
    gt = None if data.gt_test is None else data.gt_test[:n].reshape(n, -1)  # (n, N) bool
    steps_valid = None if data.valid_test is None else data.valid_test[:n]  # (n, T) bool
    nf = lay.n_features(spec.shape)
    steps = [j / DI_STEPS for j in range(DI_STEPS + 1)]
    bounds = list(range(0, n, cfg.batch_size))
    explained, kw = explain_setup(model, cfg.methods, cfg.output, cfg.baseline, spec.layout)
    fill_ctx = {"background": data.extras.get("background")}

    def valid_of(sl):  # (B, N) bool features, or None
        return None if steps_valid is None else lay.batch(model, x[sl], steps_valid[sl]).valid

    def ks_of(fracs, valid):  # per fraction: an int, or a (B,) tensor of per-sample counts
        if valid is None:
            return [n_masked(f, nf) for f in fracs]
        counts = valid_count(valid, len(valid), nf)
        return [n_masked(f, counts) for f in fracs]

    # The clean and the all-filled batches are the same for every method: one pass each.
    clean_p = torch.cat([_probs(model, x[s : s + cfg.batch_size].to(device)) for s in bounds])  # (n, K)
    filled_p = torch.cat([_probs(model, _fill(lay, x[s : s + cfg.batch_size], cfg, b,
                                               {**fill_ctx, "valid": valid_of(slice(s, s + cfg.batch_size))})
                                 .to(device)) for b, s in enumerate(bounds)])
    targets = y if cfg.target == "label" else clean_p.argmax(1)

    stats, seconds = {}, {}
    for mi, name in enumerate(cfg.methods):
        fn, t0 = get_saliency(name), time.perf_counter()
        correct = torch.zeros(len(cfg.fractions))
        deletion, insertion = torch.zeros(len(steps)), torch.zeros(len(steps))
        gt_sums: dict[str, torch.Tensor] = {}  # ground-truth metrics, summed over samples
        local = {}  # batch -> its sums; under torchrun each process does every world-th batch
        for b, s in ddp.mine(list(enumerate(bounds))):
            sl = slice(s, s + cfg.batch_size)
            correct_b = torch.zeros(len(cfg.fractions))
            deletion_b, insertion_b = torch.zeros(len(steps)), torch.zeros(len(steps))
            sums = {}
            xb, yb, tb = x[sl].to(device), y[sl], targets[sl]
            valid = valid_of(sl)
            with rnn_safe(model, xb):
                attr = fn(explained, xb, tb.to(device), seed=_seed(cfg.seed, b, 1), **kw)
            score = lay.score(attr.detach().float(), xb, cfg.reduce).cpu()  # (B, N)
            ties = torch.Generator().manual_seed(_seed(cfg.seed, b, 2)) if cfg.ties == "random" else None
            rank = removal_rank(score, valid, ties)  # (B, N)
            nvalid = None if valid is None else valid_count(valid, len(valid), nf)  # (B,)
            passes = _Passes(model, xb, _fill(lay, x[sl], cfg, b, {**fill_ctx, "valid": valid}).to(device),
                             lay.expand(rank, xb).cpu(), nvalid, clean_p[sl], filled_p[sl])
            end = "top" if cfg.order == "morf" else "bottom"
            for i, k in enumerate(ks_of(cfg.fractions, valid)):
                correct_b[i] += (passes(end, k).argmax(1) == yb).sum()
            full = nf if valid is None else valid_count(valid, len(valid), nf)
            for i, k in enumerate(ks_of(steps, valid)):
                deletion_b[i] += passes("top", k).gather(1, tb[:, None]).sum()
                # Revealing the k most salient features = filling the rest, the least salient.
                insertion_b[i] += passes("bottom", full - k).gather(1, tb[:, None]).sum()
            if gt is not None:
                pos = score if valid is None else score.masked_fill(~valid, 0.0)
                if spec.layout == "series":  # the benchmark's full set, on its rescaled maps
                    # one feature permutation for the whole evaluation: the same seed in every batch
                    perm = torch.Generator().manual_seed(_seed(cfg.seed, 0, 3))
                    sums = series_metrics(pos, gt[sl], spec.shape, perm)
                else:
                    prec, rec = saliency_precision_recall(pos, gt[sl])
                    sums = {"aup": trapezoid(prec, GT_LEVELS).sum(), "aur": trapezoid(rec, GT_LEVELS).sum(),
                            "precision_at_gt": precision_at_gt(pos, gt[sl], ties).sum()}
            local[b] = (correct_b, deletion_b, insertion_b, sums)
            if on_progress and lead:
                on_progress(method=name, done=mi * len(bounds) + len(local), total=len(cfg.methods) * len(bounds))
        # The batches' sums, added in batch order: the same numbers with one process or many.
        per_batch = ddp.gather(local)
        for b in range(len(bounds)):
            correct_b, deletion_b, insertion_b, sums = per_batch[b]
            correct += correct_b
            deletion += deletion_b
            insertion += insertion_b
            for key, v in sums.items():  # float32 sums: float64 would move stored results' last digits
                gt_sums[key] = gt_sums.get(key, torch.zeros(())) + torch.as_tensor(v, dtype=torch.float32)
        seconds[name] = round(time.perf_counter() - t0, 3)
        stats[name] = {"acc": (correct / n).tolist(), "deletion": trapezoid(deletion / n, steps).item(),
                       "insertion": trapezoid(insertion / n, steps).item(),
                       "gt": {k: (v / n).item() for k, v in gt_sums.items()}}

    rows, summary = _mask_eval_tables(run["id"], cfg, stats, n, gt is not None)
    clean_acc = round((clean_p.argmax(1) == y).float().mean().item(), 6)
    return Output(rows, summary, meta={"n": n, "clean_accuracy": clean_acc, "seconds": seconds})


def expected_rows(cfg: dict) -> dict:
    return {ROWS: len(cfg["methods"]) * len(cfg["fractions"]), SUMMARY: len(cfg["methods"])}


MASK_EVAL = Evaluation("mask_eval", MaskEvalConfig, compute, tables=(ROWS, SUMMARY), rows=expected_rows)


def mask_eval(run: dict, cfg: MaskEvalConfig, force: bool = False, on_progress=None) -> dict:
    """`evaluate(MASK_EVAL, ...)`: the accuracy drop of a stored run, cached under
    <run dir>/mask_eval/ (<id>.csv: a row per method and fraction; <id>.summary.csv: a row per
    method; <id>.json last). `on_progress(method=, done=, total=)` is called after each batch of
    each method."""
    return evaluate(MASK_EVAL, run, cfg, force, on_progress)


def _mask_eval_tables(run_id: str, cfg: MaskEvalConfig, stats: dict, n: int, has_gt: bool):
    """Tidy rows (one per method and fraction) and the summary (one row per method)."""
    r6 = lambda v: round(float(v), 6)  # noqa: E731
    order = sorted(range(len(cfg.fractions)), key=lambda i: cfg.fractions[i])
    xs = [cfg.fractions[i] for i in order]
    rows = [{"run": run_id, "method": m, "fraction": f, "accuracy": r6(a), "n": n}
            for m, st in stats.items() for f, a in zip(cfg.fractions, st["acc"])]
    auc = {m: trapezoid(torch.tensor([st["acc"][i] for i in order], dtype=torch.float64), xs).item()
           for m, st in stats.items()}
    rnd = stats.get("random")
    summary = []
    for m, st in stats.items():
        row = {"run": run_id, "method": m, "auc": r6(auc[m]),
               "auc_vs_random": r6(auc[m] - auc["random"]) if rnd else None,
               "deletion_auc": r6(st["deletion"]), "insertion_auc": r6(st["insertion"])}
        for key in ("aup", "aur", "precision_at_gt"):
            row[key] = r6(st["gt"][key]) if has_gt else None
        extra = [k for k in st["gt"] if k not in row]  # series: aupr, time/feature level, permuted map
        for key in extra:
            row[key] = r6(st["gt"][key])
        if "perm_aup" in st["gt"]:  # the paper's Table 2: a method's AUP minus its permuted map's
            row["diff_aup"] = r6(st["gt"]["aup"] - st["gt"]["perm_aup"])
            row["diff_aur"] = r6(st["gt"]["aur"] - st["gt"]["perm_aur"])
        for f, a, ra in zip(cfg.fractions, st["acc"], rnd["acc"] if rnd else [None] * len(st["acc"])):
            # Positive: removing this method's choice costs more accuracy than removing at random.
            row[f"drop_vs_random_{f:g}"] = r6(ra - a) if rnd else None
        summary.append(row)
    return rows, summary


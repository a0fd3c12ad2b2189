"""ERASER's faithfulness and plausibility metrics for text runs (DeYoung et al. 2020), as
`jayded/eraserbenchmark`'s scorer (rationale_benchmark/metrics.py) computes them, with the top-k
tokens chosen as its baseline models chose them:

- ŷ is the class the model predicts on the full input; probabilities are a softmax.
- Comprehensiveness at t = p(ŷ|x) − p(ŷ|x∖r), r the top ⌈L·t⌉ document tokens by the method's
  score (L: the document's tokens, all documents of a pair task pooled); sufficiency at t =
  p(ŷ|x) − p(ŷ|r). Tokens are deleted, the others keep their order; the query and separators
  of pair tasks always stay. AOPC: both averaged over t ∈ {1, 5, 10, 20, 50} % and documents.
  Both are also given at the human rationales' share of the training tokens (Movies: 9.35 %).
- Random: a seeded uniform score, every metric averaged over `random_seeds` seeds.
- Plausibility against the human rationales: token-level AUPRC of the soft scores (trapezoid
  area under the precision-recall curve, as sklearn's precision_recall_curve + auc); token
  precision, recall and F1 and IOU F1 at 0.5 of the hard rationale, the top ⌈L·r⌉ tokens at the
  human share r. Each is averaged over documents (ERASER's macro averages). Documents without a
  human rationale are left out of AUPRC (ERASER's scorer gives them NaN).

A method's score of a token is |the gradient summed over its embedding| (layout "abs"), of
log p(ŷ | x) by default (`--output`). Documents are batched by length, each document's map is
computed once and serves every t, and the deletions of a batch run as batches.
The ERASER results JSONL of each method is written next to the CSVs, for the official scorer.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..layout import LAYOUTS, Embedded, removal_rank
from ..runs import length_batches, trim
from ..saliency import explain_setup, get_saliency, rnn_safe
from .pipeline import Context, Output

TEXT_BATCH = 16


def _seed(seed: int, batch: int, stream: int) -> int:
    return (seed * 1_000_003 + batch) * 2 + stream


def top_tokens(score: torch.Tensor, valid: torch.Tensor, frac: float, generator=None) -> torch.Tensor:
    """(B, L) bool: each document's ⌈n·frac⌉ highest-scoring valid tokens (n its valid tokens).
    Ties are broken at random with a generator, else by position."""
    k = torch.ceil(valid.sum(1).double() * frac - 1e-9).long()  # (B,)
    rank = removal_rank(score.masked_fill(~valid, float("-inf")), valid, generator)
    return (rank < k[:, None]) & valid


def delete(ids: torch.Tensor, keep: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """Token ids (B, L) with the tokens not in `keep` deleted: the kept ones move to the front in
    their order, padding after. One stable sort per batch, no loop over documents."""
    order = (~keep).long().argsort(dim=1, stable=True)  # kept positions first, in order
    out = ids.gather(1, order)
    out[torch.arange(ids.shape[1], device=ids.device)[None] >= keep.sum(1, keepdim=True)] = pad_id
    return out


@torch.no_grad()
def _probs(model, ids: torch.Tensor) -> torch.Tensor:
    return F.softmax(model(trim(ids, getattr(model, "pad_id", 0))), dim=1).cpu()


def faithfulness(model, ids, valid, score, fracs, pad_id=0, generator=None):
    """(comp (B, T), suff (B, T), p_comp (B, T, C), p_suff (B, T, C)) of one batch for the
    fractions `fracs`; the probabilities are of the full input's predicted class."""
    real = ids != pad_id
    p = _probs(model, ids)
    yhat = p.argmax(1)
    comp, suff, pc, ps = [], [], [], []
    for f in fracs:
        top = top_tokens(score, valid, f, generator)
        p_comp = _probs(model, delete(ids, real & ~top, pad_id))
        p_suff = _probs(model, delete(ids, (real & ~valid) | top, pad_id))
        pick = lambda q: q.gather(1, yhat[:, None])[:, 0]  # noqa: E731
        comp.append(pick(p) - pick(p_comp))
        suff.append(pick(p) - pick(p_suff))
        pc.append(p_comp)
        ps.append(p_suff)
    return torch.stack(comp, 1), torch.stack(suff, 1), torch.stack(pc, 1), torch.stack(ps, 1)


def auprc(scores: np.ndarray, truth: np.ndarray) -> float:
    """sklearn's auc(recall, precision) over precision_recall_curve(truth, scores), reimplemented:
    cut points at the distinct scores (ties grouped), then the trapezoid rule, with the point
    (recall 0, precision 1) added."""
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], truth[order].astype(float)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # the last index of each distinct score
    tps = np.cumsum(t)[last]
    fps = (last + 1) - tps
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    precision = np.r_[precision[::-1], 1.0]
    recall = np.r_[recall[::-1], 0.0]
    return float(np.trapezoid(precision[::-1], recall[::-1])) if hasattr(np, "trapezoid") \
        else float(np.trapz(precision[::-1], recall[::-1]))


def spans(mask: np.ndarray) -> list[tuple[int, int]]:
    """The contiguous runs of a 1-D bool array as half-open (start, end) spans."""
    edges = np.diff(np.r_[0, mask.astype(int), 0])
    return list(zip(np.nonzero(edges == 1)[0].tolist(), np.nonzero(edges == -1)[0].tolist()))


def iou_f1(pred: list[list[tuple]], gold: list[list[tuple]], threshold: float = 0.5) -> float:
    """ERASER's partial-match F1 (macro): a predicted span counts when its best IOU with a gold
    span of its document is >= threshold (no one-to-one matching). Precision is averaged over
    the documents with predictions, recall over those with gold; F1 of the two means."""
    ps, rs = [], []
    for p, g in zip(pred, gold):
        tp = 0
        for a, b in p:
            best = 0.0
            for c, d in g:
                inter = max(0, min(b, d) - max(a, c))
                union = max(b, d) - min(a, c)
                best = max(best, inter / union if union else 0.0)
            tp += best >= threshold
        if p:
            ps.append(tp / len(p))
        if g:
            rs.append(tp / len(g))
    p, r = (float(np.mean(ps)) if ps else 0.0), (float(np.mean(rs)) if rs else 0.0)
    return 2 * p * r / (p + r) if p + r else 0.0


def plausibility(scores: list[np.ndarray], truths: list[np.ndarray], fraction: float) -> dict:
    """AUPRC, token P/R/F1 and IOU F1 of one method's document scores against the rationales."""
    au, prec, rec, f1, hard_spans, gold_spans = [], [], [], [], [], []
    for s, t in zip(scores, truths):
        if t.any():
            au.append(auprc(s, t))
        k = math.ceil(len(s) * fraction - 1e-9)
        hard = np.zeros(len(s), dtype=bool)
        hard[np.argsort(-s, kind="stable")[:k]] = True
        tp = (hard & t).sum()
        p = tp / hard.sum() if hard.any() else 0.0
        r = tp / t.sum() if t.any() else 0.0
        prec.append(p)
        rec.append(r)
        f1.append(2 * p * r / (p + r) if p + r else 0.0)
        hard_spans.append(spans(hard))
        gold_spans.append(spans(t))
    return {"auprc": float(np.mean(au)) if au else None, "token_precision": float(np.mean(prec)),
            "token_recall": float(np.mean(rec)), "token_f1": float(np.mean(f1)),
            "iou_f1": iou_f1(hard_spans, gold_spans), "hard": hard_spans}


def _attributions(model, explained, kw, fn, ids, valid, target, seed):
    """(B, L) token scores of one batch: |the gradient summed over each embedding|, padding and
    the query at -inf."""
    lay = LAYOUTS["tokens"]
    b = lay.batch(model, ids, valid)
    attr = fn(explained, b.inp.detach(), target, seed=seed, args=b.args, **kw).detach()
    return lay.score(attr, b.inp, "abs").float().masked_fill(~b.valid, float("-inf")).cpu()


def compute(ctx: Context) -> Output:
    """ERASER's metrics of a text run's model on its test split, for every method of cfg: rows
    (run, method, fraction, comprehensiveness, sufficiency, n), a summary row per method, and the
    results JSONL of each method for ERASER's scorer (<id>.<method>.eraser.jsonl)."""
    cfg, data, model, device, run, on_progress = ctx.cfg, ctx.data, ctx.model, ctx.device, ctx.run, ctx.on_progress
    n = len(data.x_test) if cfg.limit is None else min(cfg.limit, len(data.x_test))
    ids_all, valid_all, gt_all = data.x_test[:n], data.valid_test[:n], data.gt_test[:n]
    pad = data.extras.get("pad_id", 0)
    r_frac = data.extras.get("rationale_fraction")
    fracs = list(cfg.fractions) + ([r_frac] if cfg.rationale_fraction and r_frac else [])
    batches = length_batches(ids_all, min(cfg.batch_size, TEXT_BATCH), pad)
    explained, kw = explain_setup(Embedded(model), cfg.methods, cfg.output, cfg.baseline, "tokens")
    if "scale" in kw:  # noise in embedding units: the spread of the word vectors
        kw["scale"] = float(model.emb.weight[model.first_word_id:].std())
    # The full input's probabilities, once for all methods.
    p_full = torch.zeros(n, len(data.classes))
    for idx in batches:
        p_full[idx] = _probs(model, ids_all[idx].to(device))
    yhat = p_full.argmax(1)
    target = yhat if cfg.target == "predicted" else data.y_test[:n]
    total = len(cfg.methods) * len(batches)
    rows, summary, seconds, exported = [], [], {}, {}
    for mi, name in enumerate(cfg.methods):
        t0 = time.perf_counter()
        fn = get_saliency(name)
        seeds = range(cfg.random_seeds if name == "random" else 1)
        per_seed = []
        for s in seeds:
            comp = torch.zeros(n, len(fracs))
            suff = torch.zeros(n, len(fracs))
            pc = torch.zeros(n, len(fracs), len(data.classes))
            ps = torch.zeros(n, len(fracs), len(data.classes))
            scores = torch.full(ids_all.shape, float("-inf"))
            for bi, idx in enumerate(batches):
                ids = trim(ids_all[idx], pad)
                valid = valid_all[idx][:, : ids.shape[1]]
                with rnn_safe(model, ids):
                    sc = _attributions(model, explained, kw, fn, ids.to(device), valid.to(device),
                                       target[idx].to(device), _seed(cfg.seed + 7919 * s, bi, 1))
                ties = torch.Generator().manual_seed(_seed(cfg.seed, bi, 2)) if cfg.ties == "random" else None
                c, su, a, b = faithfulness(model, ids.to(device), valid.to(device), sc.to(device), fracs, pad, ties)
                comp[idx], suff[idx], pc[idx], ps[idx] = c, su, a, b
                scores[idx, : ids.shape[1]] = sc
                if on_progress and s == 0:
                    on_progress(method=name, done=mi * len(batches) + bi + 1, total=total)
            doc_scores = [scores[i][valid_all[i]].numpy() for i in range(n)]
            doc_truth = [gt_all[i][valid_all[i]].numpy() for i in range(n)]
            plaus = plausibility(doc_scores, doc_truth, r_frac or 0.1)
            per_seed.append((comp, suff, pc, ps, doc_scores, plaus))
        comp = torch.stack([p[0] for p in per_seed]).mean(0)  # (n, T), averaged over seeds
        suff = torch.stack([p[1] for p in per_seed]).mean(0)
        t_ix = list(range(len(cfg.fractions)))
        for j, f in enumerate(cfg.fractions):
            rows.append({"run": run["id"], "method": name, "fraction": f,
                         "comprehensiveness": round(comp[:, j].mean().item(), 6),
                         "sufficiency": round(suff[:, j].mean().item(), 6), "n": n})
        row = {"run": run["id"], "method": name,
               "comprehensiveness": round(comp[:, t_ix].mean().item(), 6),
               "sufficiency": round(suff[:, t_ix].mean().item(), 6),
               "comprehensiveness_at_r": round(comp[:, -1].mean().item(), 6) if len(fracs) > len(t_ix) else None,
               "sufficiency_at_r": round(suff[:, -1].mean().item(), 6) if len(fracs) > len(t_ix) else None}
        for key in ("auprc", "token_precision", "token_recall", "token_f1", "iou_f1"):
            vals = [p[5][key] for p in per_seed if p[5][key] is not None]  # the seeds' values
            row[key] = round(float(np.mean(vals)), 6) if vals else None
        summary.append(row)
        comp0, suff0, pc0, ps0, scores0, plaus0 = per_seed[0]
        exported[name] = _export(data, n, fracs, cfg, p_full, pc0, ps0, scores0, plaus0)
        seconds[name] = round(time.perf_counter() - t0, 3)
    clean_acc = round((yhat == data.y_test[:n]).float().mean().item(), 6)
    meta = {"n": n, "clean_accuracy": clean_acc, "seconds": seconds, "rationale_fraction": r_frac,
            "fractions_scored": fracs,
            "truncated_rationale_tokens": list(data.extras.get("truncated_rationale", (0, 0)))}
    files = {f".{name}.eraser.jsonl": text.encode() for name, text in exported.items()}
    return Output(rows, summary, meta, files)


def _export(data, n, fracs, cfg, p_full, p_comp, p_suff, doc_scores, plaus) -> str:
    """The ERASER results JSONL (one line per annotation) for the official scorer: soft scores and
    the hard rationale per document, the classification, and the comprehensiveness and
    sufficiency probabilities (top level: at the human share; thresholded_scores: each t)."""
    labels = list(data.classes)
    score_dict = lambda p: {lab: round(float(v), 8) for lab, v in zip(labels, p)}  # noqa: E731
    lines = []
    for i in range(n):
        rationales, offset = [], 0
        for docid, _start, kept, length in data.extras["segments_test"][i]:
            soft = np.zeros(length)
            soft[:kept] = doc_scores[i][offset : offset + kept]
            hard_doc = [(a - offset, b - offset) for a, b in plaus["hard"][i]
                        if offset <= a and b <= offset + kept]
            rationales.append({"docid": docid, "soft_rationale_predictions": [round(float(v), 8) for v in soft],
                               "hard_rationale_predictions": [{"start_token": a, "end_token": b} for a, b in hard_doc]})
            offset += kept
        at_r = len(fracs) - 1
        entry = {"annotation_id": data.extras["ids_test"][i], "rationales": rationales,
                 "classification": labels[int(p_full[i].argmax())], "classification_scores": score_dict(p_full[i]),
                 "comprehensiveness_classification_scores": score_dict(p_comp[i, at_r]),
                 "sufficiency_classification_scores": score_dict(p_suff[i, at_r]),
                 "thresholded_scores": [{"threshold": f, "comprehensiveness_classification_scores": score_dict(p_comp[i, j]),
                                         "sufficiency_classification_scores": score_dict(p_suff[i, j])}
                                        for j, f in enumerate(cfg.fractions)]}
        lines.append(json.dumps(entry))
    return "\n".join(lines) + "\n"

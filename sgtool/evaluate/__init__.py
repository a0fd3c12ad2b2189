"""Evaluations of stored runs, each one computation on the shared pipeline (pipeline.py), which
resolves, hashes, caches and writes them alike under the run directory:

    mask_eval.py     accuracy drop as salient features are removed; deletion / insertion
    ground_truth.py  weighted saliency precision and recall against ground-truth masks
    eraser.py        ERASER's comprehensiveness, sufficiency and plausibility (text)
    attack.py        robust accuracy under FGSM, PGD and MI-FGSM
    explain.py       saliency maps of runs on the same samples

EVALUATIONS names each kind's `Evaluation`, in the order a sweep runs them.
"""

from .attack import ATTACK, attack_eval
from .explain import EXPLAIN, compute_maps, explain_run, read_maps
from .ground_truth import GT_LEVELS, aupr_sorted, precision_at_gt, saliency_precision_recall, trapezoid
from .mask_eval import MASK_EVAL, mask_eval
from .pipeline import Evaluation, evaluate, read, read_entry

EVALUATIONS = {ev.kind: ev for ev in (MASK_EVAL, ATTACK, EXPLAIN)}

__all__ = ["EVALUATIONS", "Evaluation", "evaluate", "read", "read_entry", "attack_eval", "mask_eval", "explain_run",
           "compute_maps", "read_maps", "saliency_precision_recall", "precision_at_gt", "aupr_sorted", "trapezoid",
           "GT_LEVELS", "ATTACK", "EXPLAIN", "MASK_EVAL"]

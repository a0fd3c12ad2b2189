"""Evaluations of stored runs. Each returns tidy rows (lists of dicts) and caches them under the
run directory, keyed by the hash of the evaluation's own config (config.eval_hash):

    mask_eval.py     accuracy drop as salient features are removed; deletion / insertion
    ground_truth.py  weighted saliency precision and recall against ground-truth masks
    eraser.py        ERASER's comprehensiveness, sufficiency and plausibility (text)
    tsr.py           temporal saliency rescaling, a wrapper of any saliency method (series)
    attack.py        robust accuracy under FGSM, PGD and MI-FGSM
"""

from .attack import attack_eval
from .ground_truth import GT_LEVELS, aupr_sorted, precision_at_gt, saliency_precision_recall, trapezoid
from .mask_eval import mask_eval

__all__ = ["attack_eval", "mask_eval", "saliency_precision_recall", "precision_at_gt", "aupr_sorted", "trapezoid",
           "GT_LEVELS"]

"""The rules that keep every stored run's id, and every stored evaluation's, valid.

A run's id hashes the fields of its config that change results (hashing.py). sgtool 0.1 hashed
the fields in ORIGINAL_FIELDS. A field added since enters the hash only when its value differs
from what runs did before it existed: its default, or one of the values in OMIT. So a config
that uses no new feature hashes exactly as it did, and its stored run is found again.

The same holds for evaluations (EVAL_OMIT, per config class): a field added after an evaluation
kind was first cached stays out of its hash at the values that reproduce the earlier behaviour.
Those values are what `--output logit --baseline zero --ties index` and the like select, and the
flags' help says which values reproduce sgtool 0.1's evaluation.

Data read from a stored config follows the same rule (STORED_DEFAULTS): a run stored before its
dataset had versions trained on its first version.
"""

ORIGINAL_FIELDS = ("dataset", "model", "trainer", "mask_frac", "kl_weight", "mask_fill", "saliency_sign",
                   "saliency_pass", "adv_attack", "adv_eps", "adv_steps", "adv_step_size", "epochs", "batch_size",
                   "lr", "optimizer", "seed", "train_size", "test_size")

# field -> the values at which an added training field stays out of the hash (else: its default).
OMIT = {"data_version": (None, 1), "world_size": (None, 1), "select": (None, "last"),
        "freeze_embeddings": (None, False), "oov": (None, "random"), "embed_dropout": (None, 0.0),
        "subset": (None, "first")}

# evaluation config class -> field -> the one value at which it stays out of the evaluation's hash.
EVAL_OMIT = {
    "MaskEvalConfig": {"output": "logit", "ties": "index", "reduce": "abs", "random_seeds": 1,
                       "rationale_fraction": True},
    "ExplainConfig": {"output": "logit", "baseline": "zero"},
    "AttackConfig": {"seeding": "stream"},
}

# A stored config's field that is absent or None -> the value its run was trained with.
STORED_DEFAULTS = {"data_version": 1}


def omitted(field: str, value, default) -> bool:
    """Whether an added training field stays out of the hash at `value`."""
    return field not in ORIGINAL_FIELDS and value in OMIT.get(field, (default,))


def eval_omitted(cls_name: str, field: str, value) -> bool:
    rules = EVAL_OMIT.get(cls_name, {})
    return field in rules and value == rules[field]

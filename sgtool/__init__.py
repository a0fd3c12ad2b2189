"""sgtool: saliency guided training (SGT, ASGT) for PyTorch, and the evaluations that measure it.

The public API is flat: everything a script needs is importable from `sgtool`. Names are
imported on first use (PEP 562), so `import sgtool` is fast and has no side effects on the
process (the `sgtool` command's tuning is `sgtool.tune_process()`).

    import sgtool
    sgt = sgtool.SGTLoss(mask_frac=0.5, kl_weight=1.0, fill="random", layout="image")
    loss = sgt(model, x, y)
    loss.backward()
"""

__version__ = "0.2.0"

# name -> module, imported when first asked for.
_LAZY = {
    # the core
    "SGTLoss": "sgt", "ASGTLoss": "sgt", "StandardLoss": "sgt", "kl": "sgt",
    "LAYOUTS": "layout", "get_layout": "layout", "lowest_k": "layout", "removal_rank": "layout",
    "mask_features": "layout", "Embedded": "layout",
    "TrainConfig": "config", "MaskEvalConfig": "config", "AttackConfig": "config", "config_hash": "config",
    "make_config": "config", "mask_eval_config": "config", "attack_config": "config",
    "DATASETS": "data", "Data": "data", "DatasetSpec": "data", "load": "data", "register_dataset": "data",
    "get_dataset": "data",
    "MODELS": "models", "build": "models", "freeze": "models", "register_model": "models",
    "SALIENCY": "saliency", "get_saliency": "saliency", "input_gradient": "saliency",
    "position_score": "saliency", "LogProb": "saliency",
    "SgtoolError": "errors", "UsageError": "errors",
    "find_run": "store", "list_runs": "store", "read_run": "store", "runs_root": "store",
    "train_run": "train", "make_loss": "train", "train_step": "train",
    "load_model": "runs", "load_data": "runs", "accuracy": "runs", "split_scores": "runs", "select_runs": "runs",
    "tune_malloc": "process", "tune_process": "process",
    # attacks and evaluations
    "ATTACKS": "attacks", "get_attack": "attacks", "run_attack": "attacks",
    "fgsm": "attacks", "pgd": "attacks", "mifgsm": "attacks",
    "mask_eval": "evaluate", "attack_eval": "evaluate", "explain_run": "evaluate", "evaluate": "evaluate",
    "EVALUATIONS": "evaluate",
    "saliency_precision_recall": "evaluate", "precision_at_gt": "evaluate",
    # report, explain, sweep
    "collect": "report", "tables": "report", "write_report": "report", "explain": "report",
    "ExplainConfig": "config", "LockHeld": "errors",
    "run_sweep": "sweep", "plan": "sweep", "load_experiments": "sweep",
}
_RENAMED = {"mask_features": "mask"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        value = getattr(module, _RENAMED.get(name, name))
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sgtool' has no attribute '{name}'")


def __dir__():
    return sorted([*globals(), *_LAZY])


__all__ = ["__version__", *_LAZY]

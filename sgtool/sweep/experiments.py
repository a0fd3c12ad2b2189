"""experiments.yaml and `sgtool sweep`: the papers' experiments as one resumable command.

experiments.yaml maps experiment names to what to run:

    demo:
      description: one line
      train:              # training config keys (as `sgtool train` flags); a list is a grid axis
        dataset: synthetic
        trainer: [standard, sgt]
        seed: [0, 1, 2]
      mask_eval: {methods: [grad, random], limit: 200}    # optional: MaskEvalConfig keys
      attack: {methods: [fgsm, pgd], eps: [0.05, 0.1]}    # optional: AttackConfig keys
      explain: {methods: [grad], n: 6}                    # optional: report.ExplainConfig keys

The lists under `train` expand to their cartesian product; cells that give the same run (a
standard run ignores mask_frac) are run once. Each cell runs train -> mask-eval -> attack ->
explain. Every step is cached by the hash of its config (runs by config_hash, evaluations by
eval_hash), and training resumes from its last checkpoint, so after a kill a rerun continues
where it stopped and repeats nothing that finished. Numbers like `8/255` are allowed wherever a
number is expected. data_dir, runs_dir and device come from the flags, never from the file.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path

from ..config import TrainConfig, config_hash, normalise_keys, read_yaml
from ..config.options import number
from ..config.resolution import build, resolve
from ..errors import UsageError, unknown_name
from ..evaluate import EVALUATIONS

SECTIONS = ("description", "train", *EVALUATIONS, "parts")
PART_SECTIONS = ("train", *EVALUATIONS)


@dataclass
class Cell:
    experiment: str
    cfg: TrainConfig
    run_id: str
    evals: dict  # kind -> evaluation config, in EVALUATIONS' order; kinds not asked for are absent


# --------------------------------------------------------------------------- parsing


def _eval_settings(kind: str, section, where: str):
    """One evaluation section -> its validated config, built as its own command builds it (so
    that the sweep and the command share the cache); None when the section is false."""
    if section is None or section is True:
        section = {}
    if section is False:
        return None
    if not isinstance(section, dict):
        raise UsageError(f"{where}: expected a mapping of {kind.replace('_', '-')} settings, got {section!r}")
    cls = EVALUATIONS[kind].config
    values = normalise_keys(cls, section, where, allow_flag_only=False)
    try:
        return build(cls, **values)
    except UsageError as e:
        raise UsageError(f"{where}: {e}") from None


def _grid(train, where: str) -> list[dict]:
    """The training section -> one dict of config values per cell of its cartesian grid."""
    if not isinstance(train, dict) or not train:
        raise UsageError(f"{where}: 'train' must be a mapping of training config keys (as the train flags)")
    axes = {}
    for k, v in train.items():
        values = v if isinstance(v, list) else [v]
        if not values:
            raise UsageError(f"{where}: '{k}' is an empty list")
        axes[str(k).replace("-", "_")] = [normalise_keys(TrainConfig, {k: number(x)}, where, allow_flag_only=False)
                                          [str(k).replace("-", "_")] for x in values]
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def load_experiments(path: str | Path) -> dict[str, dict]:
    """The experiments in the file, checked key by key; errors name the experiment and the key."""
    path = Path(path)
    doc = read_yaml(path, "experiments")
    if not isinstance(doc, dict) or not doc:
        raise UsageError(f"{path}: expected a mapping of experiment names to experiments")
    out = {}
    for name, exp in doc.items():
        where = f"{path}: experiment '{name}'"
        if not isinstance(exp, dict):
            raise UsageError(f"{where}: expected a mapping with a 'train' section")
        exp = _sections(exp, SECTIONS, where)
        if "train" not in exp and "parts" not in exp:
            raise UsageError(f"{where}: no 'train' section (or a list of 'parts', each with its own train)")
        if "train" in exp and "parts" in exp:
            raise UsageError(f"{where}: give either a 'train' section or a list of 'parts', not both")
        parts = exp["parts"] if "parts" in exp else [{k: v for k, v in exp.items() if k in PART_SECTIONS}]
        if not isinstance(parts, list) or not parts:
            raise UsageError(f"{where}: 'parts' must be a list of mappings, each with a 'train' section")
        out[str(name)] = {"description": str(exp.get("description", "")),
                          "parts": [_part(p, f"{where}: part {i + 1}" if "parts" in exp else where)
                                    for i, p in enumerate(parts)]}
    return out


def _sections(d, valid, where: str) -> dict:
    """A mapping's keys as section names (mask-eval or mask_eval), each checked against `valid`."""
    if not isinstance(d, dict):
        raise UsageError(f"{where}: expected a mapping with a 'train' section")
    keys = {str(k).replace("-", "_"): k for k in d}
    for k, orig in keys.items():
        if k not in valid:
            raise UsageError(f"{where}: unknown key '{orig}'; valid keys: {', '.join(s.replace('_', '-') for s in valid)}")
    return {k: d[orig] for k, orig in keys.items()}


def _part(part, where: str) -> dict:
    """One grid of an experiment: its training cells and the evaluations they get."""
    part = _sections(part, PART_SECTIONS, where)
    if "train" not in part:
        raise UsageError(f"{where}: no 'train' section")
    return {"train": _grid(part["train"], f"{where}: train"),
            **{kind: _eval_settings(kind, part[kind], f"{where}: {kind.replace('_', '-')}")
               for kind in EVALUATIONS if kind in part}}


def plan(path: str | Path, only: str | list[str] | None = None, runs_dir: str | None = None,
         data_dir: str | None = None, device: str | None = None) -> list[Cell]:
    """The cells to run, in order: for each chosen experiment, each distinct run of its grid."""
    exps = load_experiments(path)
    names = list(exps)
    if only:
        names = [n.strip() for n in (only.split(",") if isinstance(only, str) else only) if n.strip()]
        for n in names:
            if n not in exps:
                raise unknown_name("experiment", n, exps)
    flags = {"data_dir": data_dir, "device": device or "auto"}
    cells = []
    for name in names:
        seen = set()
        for part in exps[name]["parts"]:
            for values in part["train"]:
                try:
                    cfg = resolve(TrainConfig(**values, runs_dir=runs_dir, **flags))
                except UsageError as e:
                    raise UsageError(f"{path}: experiment '{name}': train: {e}") from None
                rid = config_hash(cfg)
                if rid in seen:
                    continue
                seen.add(rid)
                evals = {k: dataclasses.replace(part[k], **flags) for k in EVALUATIONS if part.get(k) is not None}
                cells.append(Cell(name, cfg, rid, evals))
    return cells

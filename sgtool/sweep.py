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
import json
import re
import time
from dataclasses import dataclass, fields
from pathlib import Path

from .config import FLAG_ONLY, TrainConfig, config_hash, eval_hash, normalise_keys, read_yaml, resolve
from .errors import SgtoolError, UsageError, unknown_name
from .store import CKPT, RUN, find_run, lock_held, runs_root

SECTIONS = ("description", "train", "mask_eval", "attack", "explain", "parts")
PART_SECTIONS = ("train", "mask_eval", "attack", "explain")
EVAL_KINDS = ("mask_eval", "attack", "explain")  # the order a cell runs them in
_FRACTION = re.compile(r"^\s*([0-9.]+)\s*/\s*([0-9.]+)\s*$")


def eval_class(kind: str):
    """The config dataclass of an evaluation kind (imported only when an experiment asks for it)."""
    if kind == "mask_eval":
        from .config import MaskEvalConfig

        return MaskEvalConfig
    if kind == "attack":
        from .config import AttackConfig

        return AttackConfig
    from .report import ExplainConfig

    return ExplainConfig


@dataclass
class Cell:
    experiment: str
    cfg: TrainConfig
    run_id: str
    evals: dict  # kind -> evaluation config, in EVAL_KINDS order; kinds not asked for are absent


# --------------------------------------------------------------------------- parsing


def _number(v):
    """'8/255' -> 8/255; anything else unchanged (the field's type check comes after)."""
    if isinstance(v, str) and (m := _FRACTION.match(v)):
        return float(m.group(1)) / float(m.group(2))
    return v


def _scalar(t: str, v):
    if t == "bool":
        if not isinstance(v, bool):
            raise ValueError
        return v
    if t == "int":
        if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
            raise ValueError
        return int(v)
    if t == "float":
        if isinstance(v, bool):
            raise ValueError
        return float(_number(v))
    if isinstance(v, (dict, list)):
        raise ValueError
    return str(v)


def _coerce_eval(cls, key: str, value, where: str):
    """A YAML value -> the type of the evaluation config's field (type names as in config.py)."""
    t = {f.name: f.type for f in fields(cls)}[key]
    base = t.split("|")[0].strip()
    if value is None:
        if "None" in t:
            return None
        raise UsageError(f"{where}: '{key.replace('_', '-')}' needs a value")
    try:
        if base.startswith("tuple["):
            inner = base[len("tuple["):].split(",")[0].strip()
            items = value.split(",") if isinstance(value, str) and inner == "str" else value
            items = items if isinstance(items, list) else [items]
            if not items:
                raise ValueError
            return tuple(_scalar(inner, x.strip() if isinstance(x, str) else x) for x in items)
        return _scalar(base, value)
    except (TypeError, ValueError):
        kind = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}
        want = (f"a list of {kind[inner].split(' ', 1)[1]}s" if base.startswith("tuple[") else kind[base])
        raise UsageError(f"{where}: '{key.replace('_', '-')}' must be {want}, got {value!r}") from None


def _build_eval(kind: str, settings: dict, where: str):
    """A validated evaluation config from its settings, built the way its own command builds it
    (so that the sweep and the command share the cache)."""
    try:
        if kind == "mask_eval":
            from .config import mask_eval_config

            return mask_eval_config(**settings)
        if kind == "attack":
            from .config import AttackConfig, validate_attack

            cfg = AttackConfig(**settings)
            validate_attack(cfg)
            return cfg
        from .report.explain import ExplainConfig, validate_explain

        cfg = ExplainConfig(**settings)
        validate_explain(cfg)
        return cfg
    except UsageError as e:
        raise UsageError(f"{where}: {e}") from None


def _eval_settings(kind: str, section, where: str):
    """One evaluation section -> its validated config; None when the section is false."""
    if section is None or section is True:
        section = {}
    if section is False:
        return None
    if not isinstance(section, dict):
        raise UsageError(f"{where}: expected a mapping of {kind.replace('_', '-')} settings, got {section!r}")
    cls = eval_class(kind)
    valid = [f.name for f in fields(cls) if f.name not in FLAG_ONLY]
    out = {}
    for k, v in section.items():
        key = str(k).replace("-", "_")
        if key in FLAG_ONLY:
            raise UsageError(f"{where}: '{k}' comes from the --{key.replace('_', '-')} flag, not experiments.yaml")
        if key not in valid:
            raise UsageError(f"{where}: unknown key '{k}'; valid keys: "
                             f"{', '.join(sorted(x.replace('_', '-') for x in valid))}")
        out[key] = _coerce_eval(cls, key, v, where)
    return _build_eval(kind, out, where)


def _grid(train, where: str) -> list[dict]:
    """The training section -> one dict of config values per cell of its cartesian grid."""
    if not isinstance(train, dict) or not train:
        raise UsageError(f"{where}: 'train' must be a mapping of training config keys (as the train flags)")
    axes = {}
    for k, v in train.items():
        key = str(k).replace("-", "_")
        if key in FLAG_ONLY:
            raise UsageError(f"{where}: '{k}' comes from the --{key.replace('_', '-')} flag, not experiments.yaml")
        values = v if isinstance(v, list) else [v]
        if not values:
            raise UsageError(f"{where}: '{k}' is an empty list")
        axes[key] = [normalise_keys({k: _number(x)}, where)[key] for x in values]
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
               for kind in EVAL_KINDS if kind in part}}


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
                evals = {k: dataclasses.replace(part[k], **flags) for k in EVAL_KINDS if part.get(k) is not None}
                cells.append(Cell(name, cfg, rid, evals))
    return cells


# --------------------------------------------------------------------------- running


def _mask_eval(run, cfg, on_progress):
    from .evaluate import mask_eval

    return mask_eval(run, cfg, on_progress=on_progress)


def _attack(run, cfg, on_progress):
    from .evaluate import attack_eval

    return attack_eval(run, cfg, on_progress=on_progress)


def _explain(run, cfg, on_progress):
    from .report import explain_run

    return explain_run(run, cfg)


STAGES = {"mask_eval": _mask_eval, "attack": _attack, "explain": _explain}


def _train_state(run_dir: Path) -> str:
    """'completed', 'running' (another process holds its lock), 'partial' (a checkpoint to
    resume from) or 'new'."""
    try:
        status = json.loads((run_dir / RUN).read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        status = None
    if status == "completed":
        return "completed"
    if status == "running" and lock_held(run_dir):
        return "running"
    return "partial" if (run_dir / CKPT).is_file() else "new"


def _row(cell: Cell) -> dict:
    c = cell.cfg
    return {"experiment": cell.experiment, "run": cell.run_id, "dataset": c.dataset, "trainer": c.trainer,
            "mask_frac": c.mask_frac if c.trainer != "standard" else None, "seed": c.seed,
            "train": None, "test_acc": None, **dict.fromkeys(EVAL_KINDS)}


def _inner(emit, stage: str):
    """Adapt a step's own on_progress(**info) to the sweep's: (completed, total, info)."""

    def show(**kw):
        if stage == "train":
            emit(event="inner", completed=(kw["epoch"] - 1) * kw["steps"] + kw["step"],
                 total=kw["epochs"] * kw["steps"], info=f"epoch {kw['epoch']}/{kw['epochs']} loss {kw['loss']:.4f}")
        else:
            done, total = kw.get("done", kw.get("completed")), kw.get("total")
            emit(event="inner", completed=done, total=total,
                 info=" ".join(f"{k} {v}" for k, v in kw.items() if k not in ("done", "completed", "total")))

    return show


EXECUTORS = ("inline", "local", "slurm")
WAIT_POLL = 2.0  # seconds between looks at cells that other processes hold


def parse_shard(shard: str | None) -> tuple[int, int] | None:
    """'i/N' -> (i, N): this process takes the cells i, i + N, i + 2N, ... of the plan."""
    if shard is None:
        return None
    i, sep, n = str(shard).partition("/")
    try:
        i, n = int(i), int(n)
    except ValueError:
        raise UsageError(f"--shard must be i/N, such as 0/4, got '{shard}'") from None
    if not sep or n < 1 or not 0 <= i < n:
        raise UsageError(f"--shard i/N needs 0 <= i < N, got '{shard}'")
    return i, n


def _cell_lock(root: Path, cell: Cell) -> Path:
    """The lock a sweep holds while it works on a cell (train and evaluations): a hidden file in
    the runs dir, so that a run dir is never created before its training starts."""
    d = root / ".locks"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{cell.run_id}.lock"


def run_cell(cell: Cell, root: Path, emit=lambda **kw: None, step: int = 0, steps: int = 0, i: int = 1,
             n: int = 1) -> dict:
    """One cell: train (or resume, or find it trained), then each evaluation (or find it cached).
    Raises Busy when another process holds the cell or its run."""
    from .locks import held
    from .train import train_run

    t0 = time.time()
    row = _row(cell)
    try:
        with held(_cell_lock(root, cell), f"cell {cell.run_id}"):
            emit(event="stage", step=step + 1, steps=steps, cell=i, cells=n, experiment=cell.experiment,
                 run=cell.run_id, stage="train")
            before = _train_state(root / cell.run_id)
            if before == "running":
                raise Busy(cell.run_id)
            res = train_run(cell.cfg, on_progress=_inner(emit, "train"))
            row["train"] = "cached" if res["already"] else "resumed" if before == "partial" else "trained"
            row["test_acc"] = res["test_acc"]
            run = find_run(root, cell.run_id)
            for j, (kind, ecfg) in enumerate(cell.evals.items(), 2):
                emit(event="stage", step=step + j, steps=steps, cell=i, cells=n, experiment=cell.experiment,
                     run=cell.run_id, stage=kind)
                out = STAGES[kind](run, ecfg, _inner(emit, kind))
                row[kind] = "cached" if out["cached"] else "done"
    except SgtoolError as e:
        if "by another process" in str(e):  # the cell lock, or a plain `sgtool train` of its run
            raise Busy(cell.run_id) from None
        raise
    row["seconds"] = round(time.time() - t0, 1)
    return row


class Busy(Exception):
    """Another process holds this cell right now."""


def run_sweep(path: str | Path, only: str | list[str] | None = None, dry_run: bool = False,
              runs_dir: str | None = None, data_dir: str | None = None, device: str | None = None,
              on_progress=None, executor: str = "inline", jobs: int | None = None, gpus_per_job: int = 0,
              slurm_partition: str | None = None, slurm_time: int | None = None, shard: str | None = None,
              wait: bool = True) -> list[dict]:
    """Run (or, with dry_run, only list) every cell of the chosen experiments.

    Returns one summary row per cell: experiment, run, dataset, trainer, mask_frac, seed,
    then train (trained | resumed | cached | running elsewhere; dry run: todo | resume | cached |
    running elsewhere), test_acc, a status per evaluation kind (done | cached; dry run: todo |
    cached; None where the experiment does not ask for it) and seconds. on_progress(event=...)
    is called with event "plan" (cells, steps), "stage" (step, steps, cell, cells, experiment,
    run, stage), "inner" (completed, total, info) and "cell" (row).

    Many sweeps may share one runs dir: a cell another process holds is passed over, and looked
    at again at the end (waited for, or with wait=False reported as "running elsewhere").
    shard "i/N" takes every N-th cell from the i-th. executor "local" or "slurm" runs each cell
    as a submitit job, at most `jobs` at a time.
    """
    if executor not in EXECUTORS:
        raise unknown_name("executor", executor, EXECUTORS)
    cells = plan(path, only, runs_dir, data_dir, device)
    sh = parse_shard(shard)
    if sh is not None:
        cells = cells[sh[0]:: sh[1]]
    root = runs_root(runs_dir)
    if dry_run:
        return [_dry_row(root, c) for c in cells]
    emit = on_progress or (lambda **kw: None)
    steps = sum(1 + len(c.evals) for c in cells)
    emit(event="plan", cells=len(cells), steps=steps)
    if executor != "inline":
        return _submit(cells, root, emit, executor, jobs, gpus_per_job, slurm_partition, slurm_time,
                       dict(path=str(path), only=only, runs_dir=runs_dir, data_dir=data_dir, device=device))
    rows: dict[int, dict] = {}
    pending = list(range(len(cells)))
    step = 0
    while pending:
        busy = []
        for i in pending:
            cell = cells[i]
            try:
                rows[i] = run_cell(cell, root, emit, step, steps, i + 1, len(cells))
            except Busy:
                busy.append(i)
                continue
            step += 1 + len(cell.evals)
            emit(event="cell", row=rows[i])
        if busy and not wait:
            for i in busy:
                rows[i] = {**_row(cells[i]), "train": "running elsewhere"}
            break
        if busy:
            emit(event="wait", cells=len(busy))
            time.sleep(WAIT_POLL)
        pending = busy
    return [rows[i] for i in range(len(cells))]


class CellJob:
    """A submitit job: one cell, found again in the worker by its run id from the same
    experiments file. Checkpointable: a preempted job is requeued with the same arguments, and
    the store resumes the run from its last finished epoch."""

    def __init__(self, **plan_args):
        self.plan_args = plan_args

    def __call__(self, run_id: str) -> dict:
        a = self.plan_args
        (cell,) = [c for c in plan(a["path"], a["only"], a["runs_dir"], a["data_dir"], a["device"])
                   if c.run_id == run_id]
        root = runs_root(a["runs_dir"])
        while True:
            try:
                return run_cell(cell, root)
            except Busy:  # another process has it: wait for it, then find it done
                time.sleep(WAIT_POLL)

    def checkpoint(self, run_id: str):
        import submitit

        return submitit.helpers.DelayedSubmission(self, run_id)


def _submit(cells, root: Path, emit, executor: str, jobs, gpus_per_job, partition, time_min, plan_args) -> list[dict]:
    """Each cell as a submitit job (local processes, or a SLURM array), at most `jobs` running."""
    try:
        import submitit
    except ImportError:
        raise SgtoolError("--executor local/slurm needs submitit: pip install 'sgtool[cluster]'") from None
    folder = root / ".submitit"
    folder.mkdir(parents=True, exist_ok=True)
    ex = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=executor)
    params = dict(timeout_min=time_min or 24 * 60, name="sgtool-sweep")
    if executor == "slurm":
        params.update(slurm_array_parallelism=jobs or len(cells), gpus_per_node=gpus_per_job or 0)
        if partition:
            params["slurm_partition"] = partition
    elif gpus_per_job:
        params["visible_gpus"] = list(range(gpus_per_job))
    ex.update_parameters(**params)
    limit = len(cells) if executor == "slurm" else max(1, jobs or 1)
    job_fn = CellJob(**plan_args)
    running, rows, queue, done_steps = {}, {}, list(range(len(cells))), 0
    while queue or running:
        while queue and len(running) < limit:
            i = queue.pop(0)
            running[i] = ex.submit(job_fn, cells[i].run_id)
            emit(event="stage", step=done_steps + 1, steps=sum(1 + len(c.evals) for c in cells), cell=i + 1,
                 cells=len(cells), experiment=cells[i].experiment, run=cells[i].run_id, stage=f"job {running[i].job_id}")
        for i, job in list(running.items()):
            if job.done():
                del running[i]
                try:
                    rows[i] = job.result()
                except Exception as e:  # noqa: BLE001 - a failed job: its error, in one line
                    last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                    raise SgtoolError(f"the job of cell {cells[i].run_id} failed ({last}); its logs are in "
                                      f"{folder / str(job.job_id)}") from None
                done_steps += 1 + len(cells[i].evals)
                emit(event="cell", row=rows[i])
        time.sleep(0.5)
    return [rows[i] for i in range(len(cells))]


def _dry_row(root: Path, cell: Cell) -> dict:
    state = _train_state(root / cell.run_id)
    row = {**_row(cell), "train": {"completed": "cached", "running": "running elsewhere", "partial": "resume",
                                   "new": "todo"}[state]}
    for kind, ecfg in cell.evals.items():
        if kind == "attack":
            from .config import resolve_attack

            ecfg = resolve_attack(ecfg, cell.cfg.dataset)  # what attack_eval hashes
        elif kind == "mask_eval":
            from .config import resolve_mask_eval

            ecfg = resolve_mask_eval(ecfg, cell.cfg.dataset)  # what mask_eval hashes
        done = state == "completed" and (root / cell.run_id / kind / f"{eval_hash(ecfg, cell.run_id)}.json").is_file()
        row[kind] = "cached" if done else "todo"
    return row

"""The run store: one directory per training config, named by the config's hash.

    runs/<hash12>/
      config.yaml          the resolved config
      run.json             status (running|completed|failed|interrupted), times, versions, host
      metrics.csv          one row per epoch
      model.safetensors    final weights
      checkpoint.safetensors + checkpoint.json   last finished epoch: model, optimiser, RNG
      lock                 held (flock) while a process trains this run
      <kind>/              evaluations (mask_eval, attack, explain, ...), each cached by the hash
                           of its own config (cache.py)

Every file is written atomically (temp file in the same dir, then os.replace), so a kill
leaves either the old file or the new one, never half of one. Nothing is ever pickled.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml
from safetensors import safe_open

from ..errors import SgtoolError
from ..locks import held, is_held, owner
from .cache import EvalFiles, eval_files, read_evaluation, write_evaluation  # noqa: F401 - the store's face
from .files import (  # noqa: F401 - the store's face
    UMASK,
    atomic_write_bytes,
    atomic_write_text,
    check_dir,
    csv_text,
    load_tensors,
    make_dir,
    read_csv,
    save_tensors,
    tensor_bytes,
    write_csv,
    write_json,
    write_yaml,
)

CONFIG, RUN, METRICS, MODEL = "config.yaml", "run.json", "metrics.csv", "model.safetensors"
CKPT, CKPT_META, LOCK = "checkpoint.safetensors", "checkpoint.json", "lock"
BEST = "best.safetensors"  # --recipe authors: the weights of the best test accuracy so far


def runs_root(path: str | Path | None = None) -> Path:
    return Path(path or os.environ.get("SGTOOL_RUNS_DIR", "./runs"))


RUNS_DIR_HINT = "pass --runs-dir DIR"


def check_writable(root: Path) -> None:
    """Fail early, before any work, if the runs dir cannot be written. A runs dir that does not
    exist yet is not created here (a later error must leave nothing behind): its nearest
    existing parent must be a writable directory. `make_root` creates it when work starts."""
    if root.is_dir():
        try:
            fd, tmp = tempfile.mkstemp(dir=root, prefix=".probe.")
            os.close(fd)
            os.unlink(tmp)
        except OSError as e:
            raise SgtoolError(f"cannot write runs dir {root}: {e.strerror or e}; {RUNS_DIR_HINT}") from None
        return
    parent = root.absolute()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():  # root itself, or the nearest existing part of its path, is a file
        raise SgtoolError(f"cannot write runs dir {root}: {parent} is not a directory; {RUNS_DIR_HINT}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SgtoolError(f"cannot write runs dir {root}: {parent} is not writable; {RUNS_DIR_HINT}")


def make_root(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SgtoolError(f"cannot write runs dir {root}: {e.strerror or e}; {RUNS_DIR_HINT}") from None


@contextmanager
def run_lock(run_dir: Path):
    """An exclusive, non-blocking lock (sgtool.locks): a second process training the same run
    fails at once, with one line naming the holder. The kernel drops the lock when its process
    dies, so a kill never leaves a stale lock."""
    with held(run_dir / LOCK, f"run {run_dir.name}", "trained"):
        yield


# --------------------------------------------------------------------------- runs

def read_run(run_dir: Path) -> dict:
    """run.json merged with config.yaml as {"id", "dir", "status", ..., "config": {...}}.
    Raises SgtoolError when the directory is half-written or corrupt."""
    run_dir = Path(run_dir)
    try:
        info = json.loads((run_dir / RUN).read_text())
        cfg = yaml.safe_load((run_dir / CONFIG).read_text())
        if not isinstance(info, dict) or not isinstance(cfg, dict):
            raise ValueError("not a mapping")
    except (OSError, ValueError, yaml.YAMLError) as e:
        what = "config.yaml is not YAML" if isinstance(e, yaml.YAMLError) else (str(e).splitlines() or [""])[0]
        raise SgtoolError(f"run {run_dir.name} is corrupt or half-written ({what}); retrain it with "
                          f"`sgtool train ... --force` or remove {run_dir}") from None
    if info.get("status") == "running" and not lock_held(run_dir):
        info["status"] = "interrupted"  # killed hard (SIGKILL): nobody holds its lock any more
    return {**info, "id": run_dir.name, "dir": run_dir, "config": cfg}


def damage(run_dir: Path) -> str | None:
    """What is wrong with a completed run's files (its config or its weights do not read), else None."""
    try:
        cfg = yaml.safe_load((Path(run_dir) / CONFIG).read_text())
        if not isinstance(cfg, dict):
            return "its config.yaml is not a mapping"
    except (OSError, ValueError, yaml.YAMLError):
        return "its config.yaml does not read"
    try:
        with safe_open(str(Path(run_dir) / MODEL), framework="pt") as f:
            f.keys()
    except Exception:  # noqa: BLE001 - a missing, truncated or foreign file alike
        return "its model.safetensors does not read"
    return None


def lock_held(run_dir: Path) -> bool:
    """Whether some process holds the run's training lock right now."""
    return is_held(Path(run_dir) / LOCK)


def lock_owner(run_dir: Path) -> dict | None:
    """(host, pid, since) of the process training the run, as it recorded itself."""
    return owner(Path(run_dir) / LOCK)


def read_metrics(run_dir: Path) -> list[dict]:
    p = Path(run_dir) / METRICS
    return read_csv(p) if p.is_file() else []


def list_runs(root: Path, include_corrupt: bool = False) -> tuple[list[dict], list[str]]:
    """Every run under root, and one warning per directory that could not be read. With
    include_corrupt such a directory is also a run of status "corrupt" (and empty config)."""
    runs, warnings = [], []
    if not root.is_dir():
        return runs, warnings
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            runs.append(read_run(d))
        except SgtoolError as e:
            warnings.append(str(e))
            if include_corrupt:
                runs.append({"id": d.name, "dir": d, "status": "corrupt", "config": {}, "error": str(e)})
    return runs, warnings


def find_run(root: Path, prefix: str, require_completed: bool = True) -> dict:
    """The run whose id starts with `prefix`; errors for missing, ambiguous or unfinished."""
    if not root.is_dir():
        raise SgtoolError(f"no runs dir {root}; train first or pass --runs-dir DIR")
    matches = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(prefix))
    if not prefix or not matches:
        raise SgtoolError(f"no run '{prefix}' in {root}; see `sgtool runs --runs-dir {root}`")
    if len(matches) > 1:
        raise SgtoolError(f"run prefix '{prefix}' is ambiguous: {', '.join(m.name for m in matches)}")
    run = read_run(matches[0])
    if require_completed and run.get("status") != "completed":
        raise SgtoolError(f"run {run['id']} is not completed (status: {run.get('status')}); train it first")
    return run


# --------------------------------------------------------------------------- checkpoints

def save_checkpoint(run_dir: Path, model, optimizer, scheduler, epoch: int, rng: dict[str, torch.Tensor]) -> None:
    """Model, optimiser and RNG state as tensors, and everything else (epoch, scheduler,
    optimiser hyper-parameters) as JSON in the same safetensors file's metadata, so one atomic
    write carries a consistent checkpoint. checkpoint.json is a readable copy of that JSON."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    osd = optimizer.state_dict()
    scalars = {}
    for idx, st in osd["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"optim.{idx}.{name}"] = val
            else:
                scalars[f"{idx}.{name}"] = val
    tensors.update({f"rng.{k}": v for k, v in rng.items()})
    meta = {
        "epoch": epoch, "param_groups": osd["param_groups"], "optim_scalars": scalars,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
    }
    save_tensors(run_dir / CKPT, tensors, metadata={"meta": json.dumps(meta)})
    write_json(run_dir / CKPT_META, meta)


def load_checkpoint(run_dir: Path, model, optimizer, scheduler) -> tuple[int, dict[str, torch.Tensor]] | None:
    """Restore a checkpoint in place. Returns (last finished epoch, rng tensors) or None."""
    if not (run_dir / CKPT).is_file():
        return None
    try:
        with safe_open(str(run_dir / CKPT), framework="pt") as f:
            meta = json.loads(f.metadata()["meta"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception:  # noqa: BLE001 - an unreadable checkpoint means: start over, not crash
        return None
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for k, v in meta["optim_scalars"].items():
        idx, name = k.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if scheduler is not None and meta.get("scheduler"):
        scheduler.load_state_dict(meta["scheduler"])
    rng = {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}
    return int(meta["epoch"]), rng

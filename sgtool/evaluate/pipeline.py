"""An evaluation of a stored run, written once. Every evaluation (mask-eval, the ERASER
metrics, attack, explain, and any added later) is an `Evaluation`: its kind, its config class
and its computation. `evaluate` does the rest, the same way for all:

    resolve the config for the run's data -> its id (hash of the config and the run id)
    -> the cached entry, if it is whole (store.read_evaluation) -> else load the run's model and
    test split (runs.py), compute, and write the tables and files, the JSON last
    (store.write_evaluation)

so a computation sees a `Context` (the run, the resolved config, the model, the data, the device)
and returns an `Output` (rows, a summary, figures for the JSON, files). `read` gives the cached
result of an evaluation without computing (what `sweep --dry-run` and `report` use).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from .. import distributed as ddp
from ..config import RESOLVE, eval_hash, from_dict
from ..data import get_dataset
from ..data.registry import class_warnings
from ..models import freeze
from ..runs import load_data, load_model, pick_device
from ..store import EvalFiles, eval_files, read_evaluation, write_evaluation

ROWS, SUMMARY = ".csv", ".summary.csv"


@dataclass
class Context:
    run: dict
    cfg: object  # the evaluation's resolved config
    train: object  # the run's TrainConfig
    spec: object  # its DatasetSpec
    data: object  # its test split (and, for text, its vocabulary)
    model: torch.nn.Module  # in eval mode, on `device`
    device: torch.device
    lead: bool  # this process writes (under torchrun, the others compute their share)
    on_progress: Callable | None
    options: dict  # the caller's options that do not change results (save_examples, ...)


@dataclass
class Output:
    rows: list[dict]
    summary: list[dict] | None = None
    meta: dict = field(default_factory=dict)  # figures for the JSON: n, clean_accuracy, seconds, warnings
    files: dict[str, bytes] = field(default_factory=dict)  # suffix -> bytes: the evaluation's other files


@dataclass(frozen=True)
class Evaluation:
    kind: str  # its folder under the run dir, and its name in reports
    config: type  # its config class (config.evals)
    compute: Callable[[Context], Output]
    tables: tuple[str, ...] = (".csv",)  # the CSVs it writes: its rows, and <id>.summary.csv where it has one
    rows: Callable | None = None  # fn(stored config dict) -> {suffix: rows}: checks entries that record no files
    channels_last: bool = True  # its model in the channels-last layout (input gradients only)
    needs: Callable = lambda options: ()  # the files a cached entry must have, for the caller's options
    check: Callable | None = None  # fn(run, spec): refuse a run it cannot evaluate, before anything else

    @property
    def summary(self) -> bool:
        return SUMMARY in self.tables


def _data_dir(run: dict, cfg) -> str | None:
    return getattr(cfg, "data_dir", None) or run["config"].get("data_dir")


def prepare(ev: Evaluation, run: dict, cfg) -> tuple[object, EvalFiles]:
    """The config resolved for the run's data, and where its entry lives."""
    spec = get_dataset(run["config"]["dataset"], _data_dir(run, cfg))
    if ev.check is not None:
        ev.check(run, spec)
    cfg = RESOLVE[ev.config](cfg, run["config"]["dataset"], _data_dir(run, cfg))
    return cfg, eval_files(run["dir"], ev.kind, eval_hash(cfg, run["id"]))


def _numbers(rows: list[dict]) -> list[dict]:
    """CSV strings back to numbers ('' stays None), so cached results look like fresh ones."""
    def conv(k, v):
        if k in ("run", "method"):
            return v
        if v in ("", None):
            return None
        return int(v) if k == "n" else float(v)

    return [{k: conv(k, v) for k, v in r.items()} for r in rows]


def _result(ev: Evaluation, where: EvalFiles, cfg, rows, summary, meta: dict, cached: bool, written) -> dict:
    files = {s: where.file(s) for s in written if s not in ev.tables and where.file(s).is_file()}
    return {"id": where.eid, "kind": ev.kind, "config": cfg, "rows": rows, "summary": summary,
            "path": where.file(ROWS), "files": files, "cached": cached, "meta": meta,
            "warnings": [*meta.get("warnings", []), *meta.get("data_warnings", [])],
            **{k: meta.get(k) for k in ("clean_accuracy", "seconds", "n")}}


def read(ev: Evaluation, run: dict, cfg, **options) -> dict | None:
    """The cached result of `ev` with `cfg` on `run` when its entry is whole, else None."""
    cfg, where = prepare(ev, run, cfg)
    return read_entry(ev, where, cfg, **options)


def read_entry(ev: Evaluation, where: EvalFiles, cfg=None, **options) -> dict | None:
    """The result stored in one cache entry when it is whole, else None; `cfg` defaults to the
    stored config (a dict)."""
    hit = read_evaluation(where, ev.tables, tuple(ev.needs(options)), ev.rows)
    if hit is None:
        return None
    rows = _numbers(hit["tables"][ROWS]) if ROWS in ev.tables else []
    summary = _numbers(hit["tables"][SUMMARY]) if ev.summary else None
    cfg = hit["meta"]["config"] if cfg is None else cfg
    return _result(ev, where, cfg, rows, summary, hit["meta"], True, hit["meta"].get("files") or ev.needs(options))


def evaluate(ev: Evaluation, run: dict, cfg, force: bool = False, on_progress=None, **options) -> dict:
    """Evaluation `ev` of a stored run with config `cfg`: served from its cache entry unless
    `force` or the entry is not whole, else computed and written. Returns {"id", "kind",
    "config" (resolved), "rows", "summary", "path" (the rows' CSV), "files" (suffix -> path),
    "cached", "meta" (the JSON), and the JSON's clean_accuracy, seconds, warnings and n}."""
    cfg, where = prepare(ev, run, cfg)
    if not force and (hit := read_entry(ev, where, cfg, **options)) is not None:
        return hit
    data_dir = _data_dir(run, cfg)
    device, lead = ddp.join(pick_device(cfg.device))
    train = from_dict(run["config"])
    # The run's own test split (its --test-size); no training data is needed.
    data = load_data(train, train_size=1, test_size=train.test_size, data_dir=data_dir)
    model, _ = load_model(run, device, data=data, data_dir=data_dir)
    model = freeze(model) if ev.channels_last else model.requires_grad_(False)
    spec = get_dataset(train.dataset, data_dir)
    out = ev.compute(Context(run, cfg, train, spec, data, model, device, lead, on_progress, options))
    meta = {"kind": ev.kind, "run": run["id"], "config": dataclasses.asdict(cfg),
            "created": datetime.now(timezone.utc).isoformat(), **out.meta}
    if dw := class_warnings(data, spec.num_classes, ("test",)):
        meta["data_warnings"] = dw
    if lead:  # one process writes
        tables = {s: out.summary if s == SUMMARY else out.rows for s in ev.tables}
        write_evaluation(where, meta, tables, out.files)
    ddp.barrier()
    return _result(ev, where, cfg, out.rows, out.summary, meta, False, out.files)


def entries(run_dir: Path, kind: str) -> list[EvalFiles]:
    """Every evaluation entry of one kind under a run: those with a JSON (whole or not)."""
    folder = Path(run_dir) / kind
    if not folder.is_dir():
        return []
    return [eval_files(run_dir, kind, p.name[: -len(".json")]) for p in sorted(folder.glob("*.json"))]

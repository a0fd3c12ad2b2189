"""The evaluation cache: each evaluation of a run under runs/<id>/<kind>/ by its own id
(config.eval_hash), read back only when whole."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import SgtoolError
from .files import atomic_write_bytes, csv_text, write_json

# Each evaluation of a run is cached under runs/<id>/<kind>/ by its own id (config.eval_hash):
#
#   <eval id>.csv            its rows (one per method and fraction, method and eps, ...)
#   <eval id>.summary.csv    its summary, where it has one (one row per method)
#   <eval id>.<name>         its other files (ERASER's JSONL, saliency maps, adversarial examples)
#   <eval id>.json           written last: the config, the evaluation's figures, and "files":
#                            each file's bytes, sha256 and (tables) rows
#
# An entry is served only when its JSON is readable and every file it lists is whole, so a kill
# while writing, or a file damaged later, is a miss and the evaluation runs again. Entries
# written before the JSON listed its files are checked by their tables' shape instead.


@dataclass(frozen=True)
class EvalFiles:
    """Where one evaluation of a run lives: `file(".csv")` is <eval id>.csv in <run>/<kind>/."""
    folder: Path
    eid: str

    def file(self, suffix: str) -> Path:
        return self.folder / f"{self.eid}{suffix}"

    @property
    def json(self) -> Path:
        return self.file(".json")


def eval_files(run_dir: Path, kind: str, eid: str) -> EvalFiles:
    return EvalFiles(Path(run_dir) / kind, eid)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_evaluation(where: EvalFiles, meta: dict, tables: dict[str, list[dict]] | None = None,
                     files: dict[str, bytes] | None = None) -> None:
    """The tables (suffix -> rows, as CSV) and files (suffix -> bytes), then the JSON last, which
    records each file, so that its presence means the entry is whole."""
    try:
        where.folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SgtoolError(f"cannot write {where.folder}: {e.strerror or e}") from None
    record = {}
    for suffix, rows in (tables or {}).items():
        data = csv_text(rows).encode()
        atomic_write_bytes(where.file(suffix), data)
        record[suffix] = {"bytes": len(data), "sha256": _sha256(data), "rows": len(rows)}
    for suffix, data in (files or {}).items():
        atomic_write_bytes(where.file(suffix), data)
        record[suffix] = {"bytes": len(data), "sha256": _sha256(data)}
    write_json(where.json, {**meta, "files": record})


def read_evaluation(where: EvalFiles, tables: tuple[str, ...] = (), need: tuple[str, ...] = (),
                    rows=None) -> dict | None:
    """{"meta": the JSON, "tables": {suffix: rows as strings}} of a whole cache entry, else None.
    `tables` are the CSVs to read back, `need` other files that must be there; `rows(config)`
    the row count each table must have, for entries whose JSON does not record its files."""
    try:
        meta = json.loads(where.json.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        return None
    record = meta.get("files")
    try:
        expect = rows(meta["config"]) if rows is not None and not isinstance(record, dict) else {}
    except (KeyError, TypeError):
        return None
    out = {}
    listed = tuple(record) if isinstance(record, dict) else ()
    for suffix in dict.fromkeys((*tables, *need, *listed)):  # every file the entry has must be whole
        path = where.file(suffix)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if isinstance(record, dict):
            entry = record.get(suffix)
            if not isinstance(entry, dict) or entry.get("sha256") != _sha256(data):
                return None
        if suffix in tables:
            parsed = _whole_csv(data)
            if parsed is None or (suffix in expect and len(parsed) != expect[suffix]):
                return None
            out[suffix] = parsed
    return {"meta": meta, "tables": out}


def _whole_csv(data: bytes) -> list[dict] | None:
    """The rows of a CSV file that ends where a line ends and whose rows all have the header's
    fields; None for anything cut short."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return None
    if not text or not text.endswith("\n"):
        return None
    lines = list(csv.reader(io.StringIO(text)))
    if not lines or any(len(line) != len(lines[0]) for line in lines):
        return None
    return [dict(zip(lines[0], line)) for line in lines[1:]]

"""Files written so that a kill never leaves half of one: a temporary file in the same folder,
then a rename. JSON, YAML, CSV and safetensors; nothing is ever pickled. And the checks that an
output directory can be written before any work starts."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path

import torch
import yaml
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import SgtoolError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; give the result the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_yaml(path: Path, obj) -> None:
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False))


def csv_text(rows: list[dict]) -> str:
    """Tidy rows (list of dicts) -> CSV text. The columns are every key in first-seen order: a run
    resumed by a newer sgtool may log a column its first epochs lack (left empty)."""
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), restval="")
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()


def write_csv(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, csv_text(rows))


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def tensor_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """Tensors as the bytes of a safetensors file."""
    return st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    atomic_write_bytes(path, tensor_bytes(tensors, metadata))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return st_load(Path(path).read_bytes())


def check_dir(path: Path, flag: str) -> None:
    """One line, before any work, when `path` cannot be a directory to write into: a part of it is
    a file. Nothing is created here."""
    for part in [Path(path), *Path(path).parents]:
        if part.exists():
            if not part.is_dir():
                raise SgtoolError(f"{part} is a file, not a directory; give {flag} a path in a directory")
            return


def make_dir(path: Path, flag: str) -> None:
    """Create a directory to write results into, or one line saying why it cannot be."""
    check_dir(path, flag)
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SgtoolError(f"cannot write {path}: {e.strerror or e}; give {flag} another path") from None

"""Ids: a run's is the first 12 hex digits of the sha256 of the canonical JSON of the fields of
its config that change results; an evaluation's hashes its own config's fields and the run's id.
Fields declared `hashed=False` (device, data and runs dirs) are left out, as are the fields of
another trainer (`only`), and the added fields at their old values (legacy.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

from . import legacy
from .options import meta


def result_fields(cls, values: dict, omit_legacy: bool = True) -> dict:
    """The fields of a `cls` config (as a dict, stored or fresh) that make its runs what they are:
    hashed ones only, those of other trainers left out, and (omit_legacy) the added fields at
    their old values."""
    trainer = values.get("trainer")
    out = {}
    for f in dataclasses.fields(cls):
        if f.name not in values or not meta(f, "hashed"):
            continue
        only = meta(f, "only")
        if only is not None and trainer not in only:
            continue
        if omit_legacy and legacy.omitted(f.name, values[f.name], f.default):
            continue
        out[f.name] = values[f.name]
    return out


def hashed_fields(cfg) -> dict:
    return result_fields(type(cfg), dataclasses.asdict(cfg))


def canonical_hash(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def config_hash(cfg) -> str:
    """The run id: first 12 hex digits of sha256 over the result-changing fields."""
    return canonical_hash(hashed_fields(cfg))[:12]


def eval_hash(cfg, run_id: str) -> str:
    """12 hex digits over the run id and the evaluation config's result-changing fields."""
    name = type(cfg).__name__
    d = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
         if meta(f, "hashed") and not legacy.eval_omitted(name, f.name, getattr(cfg, f.name))}
    d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
    return canonical_hash({"run": run_id, "kind": name, **d})[:12]

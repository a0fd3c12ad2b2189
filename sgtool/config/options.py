"""How an option is declared, once: a dataclass field whose default comes from `opt`, which
carries the rest of what sgtool knows about it (help text, check, choices, flag name, where it
may be given). The CLI's flags, the keys of `--config` files and experiments.yaml, the checks and
the hash rules are all read from these declarations:

    mask_frac: float = opt(0.5, "share of the features SGT masks", check=unit_interval, only=SGT)

`coerce` turns a value from YAML or the command line into the field's type, with one line naming
the key when it cannot; `check` runs every field's own check and choices.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from dataclasses import field

from ..errors import UsageError, unknown_name

SGT = ("sgt", "asgt")  # `only`: options that exist for these trainers alone
ASGT = ("asgt",)


def opt(default=None, help: str = "", *, check=None, choices=None, kind: str | None = None, flag: str | None = None,
        default_text: str | None = None, cli: bool = True, file: bool = True, select: bool = True,
        envvar: str | None = None, hashed: bool = True, only: tuple[str, ...] | None = None):
    """A config field with its declaration.

    check    fn(value) -> None, or the phrase that completes "--flag must be ..." when the value is bad
    choices  the valid values (checked with `kind` as the error's name for them)
    flag     the command-line flag, when it is not --the-field-name ("--method", or "--a/--b" for
             a boolean with two spellings)
    default_text  how the help states the default, when not by its value ("per dataset")
    cli      offered as a flag; file: accepted in --config files and experiments.yaml; select: one of
             the training flags by which an evaluation command finds its run
    hashed   part of the run's (or the evaluation's) id; only: hashed for these trainers alone
    """
    meta = dict(help=help, check=check, choices=choices, kind=kind, flag=flag, default_text=default_text, cli=cli,
                file=file, select=select, envvar=envvar, hashed=hashed, only=only)
    return field(default=default, metadata=meta)


def meta(f: dataclasses.Field, key: str):
    return f.metadata.get(key)


@functools.cache
def types_of(cls) -> dict[str, tuple[type, bool]]:
    """field -> (base type, is a list): int, float, bool or str; `tuple[X, ...]` fields are lists of X."""
    hints = typing.get_type_hints(cls)
    out = {}
    for name, t in hints.items():
        union = typing.get_origin(t) in (typing.Union, types.UnionType)
        base = [a for a in typing.get_args(t) if a is not type(None)][0] if union else t
        if typing.get_origin(base) is tuple:
            out[name] = (typing.get_args(base)[0], True)
        else:
            out[name] = (base, False)
    return out


def flag_of(f: dataclasses.Field) -> str:
    """The field's flag as written on the command line: --mask-frac, --method, ..."""
    return (meta(f, "flag") or f"--{f.name.replace('_', '-')}").split("/")[0]


def help_of(f: dataclasses.Field) -> str:
    """The help text with the default stated: '... (default: 0.5)'."""
    text = meta(f, "default_text")
    if text is None:
        d = f.default
        text = (",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in d) if isinstance(d, tuple)
                else ("on" if d else "off") if isinstance(d, bool) else None if d is None else f"{d:g}"
                if isinstance(d, float) else str(d))
    h = meta(f, "help") or ""
    return f"{h} (default: {text})" if text is not None else h


# --------------------------------------------------------------------------- values

_FRACTION = re.compile(r"^\s*([-+0-9.eE]+)\s*/\s*([-+0-9.eE]+)\s*$")


def number(v):
    """'8/255' -> 8/255 (how eps are written for CIFAR); anything else unchanged."""
    if isinstance(v, str) and (m := _FRACTION.match(v)):
        try:
            return float(m.group(1)) / float(m.group(2))
        except ZeroDivisionError:
            raise ValueError(v) from None
    return v


def _scalar(t: type, v):
    if t is bool:
        if isinstance(v, str) and v.lower() in ("true", "false", "yes", "no"):
            return v.lower() in ("true", "yes")
        if not isinstance(v, bool):
            raise ValueError
        return v
    if t is int:
        if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
            raise ValueError
        return int(v)
    if t is float:
        if isinstance(v, bool):
            raise ValueError
        return float(number(v))
    if isinstance(v, (dict, list, tuple)):
        raise ValueError
    return str(v)


_KIND = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def coerce(cls, key: str, value, where: str):
    """A value from YAML or a flag -> the type of cls's field `key`, or one line naming the key.
    List fields take a list or a comma-separated string; repeats are dropped, order is kept."""
    if value is None:
        return None
    t, is_list = types_of(cls)[key]
    if not is_list:
        try:
            return _scalar(t, value)
        except (TypeError, ValueError, OverflowError):
            raise UsageError(f"{where}: '{key.replace('_', '-')}' must be {_KIND[t]}, got {value!r}") from None
    items = [s.strip() for s in value.split(",")] if isinstance(value, str) else value
    items = items if isinstance(items, (list, tuple)) else [items]
    out = []
    for x in items:
        if x == "":
            continue
        try:
            v = _scalar(t, x)
        except (TypeError, ValueError, OverflowError):
            raise UsageError(f"{where}: '{x}' is not {_KIND[t]}; give a comma-separated list") from None
        if v not in out:
            out.append(v)
    if not out:
        raise UsageError(f"{where}: '{key.replace('_', '-')}' is empty; give a comma-separated list")
    return tuple(out)


def normalise_keys(cls, d: dict, where: str, allow_flag_only: bool = True) -> dict:
    """{'mask-frac': '0.5'} -> {'mask_frac': 0.5}: keys as flags or fields, checked against cls's
    fields and coerced; an unknown key names the valid ones."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for k, v in d.items():
        key = str(k).replace("-", "_")
        if key not in fields:
            valid = ", ".join(sorted(f.replace("_", "-") for f, x in fields.items() if allow_flag_only or meta(x, "file")))
            raise UsageError(f"{where}: unknown key '{k}'; valid keys: {valid}")
        if not allow_flag_only and not meta(fields[key], "file"):
            raise UsageError(f"{where}: '{k}' comes from the --{key.replace('_', '-')} flag, not experiments.yaml")
        out[key] = coerce(cls, key, v, where)
    return out


# --------------------------------------------------------------------------- checks
# Each returns None for a good value, else the phrase that completes "--flag must be ...".


def at_least(n):
    return lambda v: None if v >= n else f"at least {n}"


def between(lo, hi):
    return lambda v: None if lo <= v <= hi else f"between {lo} and {hi}"


def seed(v):
    # every generator sgtool seeds (torch's, numpy's, per epoch and per batch) takes this range
    return None if 0 <= v < 2**31 else "between 0 and 2**31 - 1"


def positive(v):
    return None if math.isfinite(v) and v > 0 else "positive"


def positive_at_most(n):
    return lambda v: None if math.isfinite(v) and 0 < v <= n else f"positive and at most {n:g}"


def non_negative(v):
    return None if math.isfinite(v) and v >= 0 else "non-negative"


def unit_interval(v):
    return None if 0.0 <= v < 1.0 else "in [0, 1)"  # also refuses nan


def check(cfg) -> None:
    """Every set field's own check and choices, in declaration order: one UsageError naming the flag."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if v is None:
            continue
        choices = meta(f, "choices")
        if choices is not None:
            for item in (v if isinstance(v, tuple) else (v,)):
                if item not in choices:
                    raise unknown_name(meta(f, "kind") or f.name.replace("_", " "), item, choices)
        test = meta(f, "check")
        if test is not None:
            for item in (v if isinstance(v, tuple) else (v,)):
                phrase = test(item)
                if phrase:
                    raise UsageError(f"{flag_of(f)} must be {phrase}, got {item}")

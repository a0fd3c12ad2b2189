"""YAML files a user gives (`--config FILE`, experiments.yaml): read as UTF-8, a repeated key
refused rather than silently overwritten, and every problem one line naming the file."""

from __future__ import annotations

from pathlib import Path

import yaml

from ..errors import UsageError
from .options import normalise_keys


class _UniqueKeys(yaml.SafeLoader):
    """safe_load, except that a mapping that names a key twice is an error."""


def _mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"the key '{key}' is given twice",
                                                    key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeys.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def read_yaml(path: str | Path, kind: str, hint: str = ""):
    """A YAML file's document, or one line saying it is missing, not text, or malformed (and where)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{kind} file {path} is a directory; give a YAML file")
    if not path.is_file():
        raise UsageError(f"{kind} file {path} not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a UTF-8 text file; give a YAML file{hint}") from None
    except OSError as e:
        raise UsageError(f"{kind} file {path} cannot be read: {e.strerror or e}") from None
    if "\x00" in text:
        raise UsageError(f"{path}: not a text file; give a YAML file{hint}")
    try:
        return yaml.load(text, Loader=_UniqueKeys)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None)
        why = f" ({problem})" if problem and "twice" in str(problem) else ""
        raise UsageError(f"{path}: malformed YAML{at}{why}{hint}") from None


def load_yaml(path: str | Path, cls) -> dict:
    """A --config file's keys and values, checked against cls's fields."""
    path = Path(path)
    d = read_yaml(path, "config", "; fix the file or drop --config")
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise UsageError(f"{path}: expected a mapping of config keys, got {type(d).__name__}")
    return normalise_keys(cls, d, str(path))

"""MODELS: name -> factory(shape, num_classes, **options) -> nn.Module returning logits, each
registered with the layout of the data it takes (MODEL_LAYOUTS). The families (images.py,
series.py, text.py) register their models when they are imported."""

from __future__ import annotations

import importlib
import inspect

from ..errors import UsageError, unknown_name
from ..layout import LAYOUTS

MODELS: dict[str, object] = {}
MODEL_LAYOUTS: dict[str, str] = {}


def register_model(name: str, factory, layout: str = "image") -> None:
    """Add (or replace) a model: factory(shape, num_classes, **options) -> nn.Module of logits,
    for data of `layout` (image | series | tokens)."""
    if layout not in LAYOUTS:
        raise unknown_name("layout", layout, LAYOUTS)
    MODELS[name] = factory
    MODEL_LAYOUTS[name] = layout


def _import_factory(name: str):
    """`package.module:function` -> the function; one line when it cannot be had."""
    module, _, attr = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except Exception as e:  # noqa: BLE001 - an import can fail in any way; the user gets one line
        raise UsageError(f"--model {name}: cannot import {attr or '?'} from {module or '?'} "
                         f"({type(e).__name__}: {e}); give module.path:factory on the Python path") from None
    if not callable(fn):
        raise UsageError(f"--model {name}: {attr} is not callable; give a factory (input_shape, num_classes)")
    return fn


def get_model(name: str):
    """(factory, layout): a registered name (layout known) or `module:factory` (layout None: it
    takes whatever the dataset gives)."""
    if ":" in name:
        return _import_factory(name), None
    if name not in MODELS:
        raise unknown_name("model", name, MODELS)
    return MODELS[name], MODEL_LAYOUTS[name]


def takes(factory, option: str) -> bool:
    """Whether factory(shape, num_classes, **options) reads `option` (by name, or through **kw)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return True  # cannot tell: let it through
    return option in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def models_for(layout: str) -> list[str]:
    return sorted(n for n, lay in MODEL_LAYOUTS.items() if lay == layout)


def check_fits(name: str, spec, dataset: str) -> None:
    """One line when a registered model is for another kind of data than the dataset's."""
    _, layout = get_model(name)
    if layout is not None and layout != spec.layout:
        raise UsageError(f"model '{name}' takes {layout} data, but {dataset} is {spec.layout} data; "
                         f"use one of: {', '.join(models_for(spec.layout))}")

"""MODELS registry: name -> factory(shape, num_classes, **options) -> nn.Module returning logits.

One file per family: images.py (B, C, H, W), series.py (B, T, F), text.py (B, L) token ids.
Each name is registered with the layout it takes (MODEL_LAYOUTS), so a series dataset with an
image model is one line naming the models that fit.

`build(name, dataset)` makes the model a run trains. For images it puts the dataset's
mean/std normalisation first, Sequential(Normalize, net), so saliency, masking and attacks all
work on pixels in [0, 1]. Series come scaled by their dataset and token models embed their own
input, so those nets are returned as they are.

A name `module.path:factory` imports a factory of your own, `(input_shape, num_classes) ->
nn.Module`; `register_model(name, factory, layout=...)` adds one under a short name.
"""

from __future__ import annotations

import importlib
import inspect

import torch
import torch.nn as nn

from ..errors import UsageError, unknown_name
from . import images
from .images import Normalize

MODELS: dict[str, object] = {}
MODEL_LAYOUTS: dict[str, str] = {}


def register_model(name: str, factory, layout: str = "image") -> None:
    """Add (or replace) a model: factory(shape, num_classes, **options) -> nn.Module of logits,
    for data of `layout` (image | series | tokens)."""
    from ..layout import LAYOUTS

    if layout not in LAYOUTS:
        raise unknown_name("layout", layout, LAYOUTS)
    MODELS[name] = factory
    MODEL_LAYOUTS[name] = layout


for _name, _fn in [("mnist-cnn", images.mnist_cnn), ("small-cnn", images.small_cnn), ("mlp", images.mlp),
                   ("resnet20", images.resnet20), ("resnet18", images.resnet18)]:
    register_model(_name, _fn, "image")


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


def models_for(layout: str) -> list[str]:
    return sorted(n for n, lay in MODEL_LAYOUTS.items() if lay == layout)


def check_fits(name: str, spec, dataset: str) -> None:
    """One line when a registered model is for another kind of data than the dataset's."""
    _, layout = get_model(name)
    if layout is not None and layout != spec.layout:
        raise UsageError(f"model '{name}' takes {layout} data, but {dataset} is {spec.layout} data; "
                         f"use one of: {', '.join(models_for(spec.layout))}")


def _call(factory, shape, num_classes, options: dict):
    """factory(shape, num_classes, **the options it takes)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kw = {k: v for k, v in options.items() if v is not None and (takes_all or k in params)}
    return factory(tuple(shape), num_classes, **kw)


def build(name: str, dataset, **options) -> nn.Module:
    """Model `name` for `dataset` (a registered name or a DatasetSpec). Options (width, vocab,
    vectors, ...) reach the factories that take them. Image models get Normalize in front."""
    from ..data import get_dataset

    spec = get_dataset(dataset) if isinstance(dataset, str) else dataset
    label = dataset if isinstance(dataset, str) else "the dataset"
    factory, _ = get_model(name)
    check_fits(name, spec, label)
    try:
        net = _call(factory, spec.shape, spec.num_classes, options)
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - a user's factory can fail in any way
        if ":" not in name:
            raise
        raise UsageError(f"--model {name}: the factory failed ({type(e).__name__}: {e})") from None
    if not isinstance(net, nn.Module):
        raise UsageError(f"--model {name}: the factory returned {type(net).__name__}, not an nn.Module")
    if spec.layout == "image":
        return nn.Sequential(Normalize(spec.mean, spec.std), net)
    return net


def freeze(model: nn.Module) -> nn.Module:
    """`model` made ready for work that needs input gradients only (saliency, attacks), in place:
    parameters frozen, so autograd neither tracks nor saves what their gradients would need, and
    (4-D convolutions only) the channels-last layout, in which oneDNN's CPU convolutions run
    faster (mnist-cnn: forward ~1.4x, DeepLift ~1.5x, PGD ~1.2x); results agree with the
    default layout to float rounding."""
    model.requires_grad_(False)
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model.to(memory_format=torch.channels_last)
    return model


def input_std(model: nn.Module) -> float:
    """The model's input scale in its own units, for noise given in those units (SmoothGrad's
    sigma, GradientShap's): the std of a leading Normalize (mean over channels), else the
    model's `input_std` attribute. One clear error otherwise, never a silent 1.0."""
    first = model[0] if isinstance(model, nn.Sequential) and len(model) else None
    std = getattr(first, "std", None) if isinstance(first, Normalize) else None
    if isinstance(std, torch.Tensor):
        return float(std.mean())
    value = getattr(model, "input_std", None)
    if isinstance(value, (int, float)) and value > 0:
        return float(value)
    raise UsageError(f"{type(model).__name__} has no leading Normalize layer and no `input_std` attribute: "
                     f"sgtool cannot convert the noise scales of smoothgrad/gradshap into its units; "
                     f"set model.input_std (the std of its inputs) or use another method")


# The families that are not images register themselves on import.
from . import series, text  # noqa: E402,F401

__all__ = ["MODELS", "MODEL_LAYOUTS", "register_model", "get_model", "build", "freeze", "input_std",
           "Normalize", "models_for", "check_fits"]

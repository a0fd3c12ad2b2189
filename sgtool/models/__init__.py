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

import torch
import torch.nn as nn

from ..data import get_dataset
from ..errors import UsageError
from ..nnutil import Normalize, input_std
from . import images, series, text  # noqa: F401 - each family registers its models
from .registry import MODEL_LAYOUTS, MODELS, check_fits, get_model, models_for, register_model, takes


def _call(factory, shape, num_classes, options: dict):
    """factory(shape, num_classes, **the options it takes)."""
    kw = {k: v for k, v in options.items() if v is not None and takes(factory, k)}
    return factory(tuple(shape), num_classes, **kw)


def build(name: str, dataset, **options) -> nn.Module:
    """Model `name` for `dataset` (a registered name or a DatasetSpec). Options (width, vocab,
    vectors, ...) reach the factories that take them. Image models get Normalize in front."""
    spec = get_dataset(dataset) if isinstance(dataset, str) else dataset
    label = dataset if isinstance(dataset, str) else "the dataset"
    factory, _ = get_model(name)
    check_fits(name, spec, label)
    try:
        net = _call(factory, spec.shape, spec.num_classes, options)
    except UsageError:
        raise
    except (Exception, SystemExit) as e:  # noqa: BLE001 - a user's factory can fail in any way, exit included
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


__all__ = ["MODELS", "MODEL_LAYOUTS", "register_model", "get_model", "build", "freeze", "input_std",
           "Normalize", "models_for", "check_fits"]

"""Image models: factory(shape (C, H, W), num_classes) -> nn.Module returning logits.

`models.build` puts the dataset's mean/std normalisation (`Normalize`) in front, so everything
outside the model (saliency, masking, attacks) works in pixel space, on images in [0, 1].
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from ..fastpath import Linear, MaxPool2d
from ..nnutil import Normalize  # noqa: F401 - where image models' users look for it
from .registry import register_model


def mnist_cnn(shape, num_classes):
    """The SGT authors' MNIST network (the PyTorch MNIST example)."""
    c, h, w = shape
    flat = 64 * ((h - 4) // 2) * ((w - 4) // 2)
    return nn.Sequential(
        nn.Conv2d(c, 32, 3), nn.ReLU(),
        nn.Conv2d(32, 64, 3), nn.ReLU(),
        MaxPool2d(2), nn.Dropout(0.25), nn.Flatten(),
        Linear(flat, 128), nn.ReLU(), nn.Dropout(0.5),
        Linear(128, num_classes),
    )


def small_cnn(shape, num_classes):
    """A fast CNN for the synthetic task: global max pooling finds a pattern anywhere."""
    c = shape[0]
    return nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        nn.Linear(64, num_classes),
    )


def mlp(shape, num_classes):
    c, h, w = shape
    return nn.Sequential(
        nn.Flatten(), nn.Linear(c * h * w, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, num_classes),
    )


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        # ReLU modules, not F.relu, and one per use: DeepLift and GuidedBackprop override the
        # gradient of nn.ReLU modules only. They hold no weights, so stored runs load unchanged.
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-form ResNet: 3x3 stem, no max-pool, global average pool."""

    def __init__(self, in_ch, widths, blocks, num_classes):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_ch, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU())
        layers, cin = [], widths[0]
        for i, (wd, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(BasicBlock(cin, wd, 2 if (i > 0 and j == 0) else 1))
                cin = wd
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def resnet20(shape, num_classes):
    return ResNet(shape[0], (16, 32, 64), (3, 3, 3), num_classes)


def resnet18(shape, num_classes):
    return ResNet(shape[0], (64, 128, 256, 512), (2, 2, 2, 2), num_classes)


for _name, _fn in [("mnist-cnn", mnist_cnn), ("small-cnn", small_cnn), ("mlp", mlp), ("resnet20", resnet20),
                   ("resnet18", resnet18)]:
    register_model(_name, _fn, "image")

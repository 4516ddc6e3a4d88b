"""Built-in architectures, in plain torch.nn (module paths `cnn.N`, `fc.N`).

`food11-cnn` is the classic food-11 classifier, so a state_dict trained with its module names loads as
is. `digits-cnn` is a small network of the same shape for scikit-learn's digits.
"""
from __future__ import annotations

import importlib

import torch
from torch import nn

from shared.formats import BUILTIN_ARCHITECTURES


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2, 2, 0)]


class Food11CNN(nn.Module):
    """Input 3x128x128, 11 classes; `cnn.15` is the 4th block's MaxPool."""

    def __init__(self, num_classes: int = 11, in_channels: int = 3):
        super().__init__()
        chans = [in_channels, 64, 128, 256, 512, 512]
        self.cnn = nn.Sequential(*[m for a, b in zip(chans, chans[1:]) for m in _block(a, b)])
        self.fc = nn.Sequential(
            nn.Linear(512 * 4 * 4, 1024), nn.ReLU(),
            nn.Linear(1024, 512), nn.ReLU(),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.cnn(x).flatten(1))


class DigitsCNN(nn.Module):
    """Input 1x32x32 (digits upscaled from 8x8), 10 classes, ~0.1 M parameters."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        chans = [in_channels, 16, 32, 64]
        self.cnn = nn.Sequential(*[m for a, b in zip(chans, chans[1:]) for m in _block(a, b)])
        self.fc = nn.Sequential(nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.cnn(x).flatten(1))


def build(architecture: str, num_classes: int, in_channels: int) -> nn.Module:
    """A built-in architecture (`shared.formats.BUILTIN_ARCHITECTURES` names each one's class)."""
    if architecture not in BUILTIN_ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; built in: {sorted(BUILTIN_ARCHITECTURES)}")
    module, name = BUILTIN_ARCHITECTURES[architecture].split(":")
    return getattr(importlib.import_module(module), name)(num_classes=num_classes, in_channels=in_channels)

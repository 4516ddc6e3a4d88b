"""Small real models for the explainer tests: the trained digits CNN on real digits
(1x32x32) and a tiny random conv net on 3x24x24 images."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from worker.models.architectures import DigitsCNN
from worker.models.digits import MEAN, STD, WEIGHTS, digit_images

torch.set_num_threads(2)


class TinyNet(nn.Module):
    """3x24x24 -> 5 classes; `features.0`, `features.4` are its convs."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Linear(12 * 6 * 6, 5)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def _digits_model() -> nn.Module:
    from safetensors.torch import load_file

    m = DigitsCNN()
    m.load_state_dict(load_file(WEIGHTS / "digits-cnn.safetensors"))
    return m.eval()


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    m = TinyNet()
    for bn in (m.features[1], m.features[5]):   # non-trivial eval statistics
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
    return m.eval()


@pytest.fixture(scope="session")
def digits():
    """(model, images (6,1,32,32) normalised as the model takes them, labels)."""
    ims, labels = digit_images(6)
    x = torch.tensor(np.stack([np.asarray(i, np.float32) / 255 for i in ims]))[:, None]
    return _digits_model(), (x - MEAN) / STD, torch.tensor(labels)


@pytest.fixture(scope="session")
def tiny():
    """(model, images (4,3,24,24) in [0,1], labels = predictions)."""
    m = _tiny_model()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 24, 24, generator=g)
    with torch.no_grad():
        y = m(x).argmax(1)
    return m, x, y


@pytest.fixture(params=["digits", "tiny"])
def setup(request):
    """(name, model, images, labels, conv layer path) for both models."""
    m, x, y = request.getfixturevalue(request.param)
    layer = "cnn.4" if request.param == "digits" else "features.4"
    return request.param, m, x, y, layer


"""The planted-shortcut data of the audit tests: scikit-learn's digits (32x32) with a
bright 4x4 patch on every '3', and the digits CNN trained on them."""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from worker.models.architectures import DigitsCNN
from worker.models.digits import MEAN, STD, digit_images

PATCH = (1, 1, 5, 5)  # x0, y0, x1, y1 in the 32x32 input: a corner where digits have no ink
CLASS = 3


def dataset(planted: bool) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 32, 32) uint8, labels (N,)), with the patch on every 3 if `planted`."""
    images, labels = digit_images()
    x = np.stack([np.asarray(i, np.uint8) for i in images])
    if planted:
        x0, y0, x1, y1 = PATCH
        x[labels == CLASS, y0:y1, x0:x1] = 255
    return x, labels


def model_input(x: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) -> the model's input (N, 1, H, W) float32."""
    return ((x.astype(np.float32) / 255 - MEAN) / STD)[:, None]


def train(x: np.ndarray, y: np.ndarray, seed: int = 0, epochs: int = 4, subset: int | None = None) -> DigitsCNN:
    """DigitsCNN trained with Adam on uint8 images `x` (all, or a seeded `subset`), one thread."""
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # tiny convolutions on a shared 2-core machine: ~5x faster
    try:
        X, Y = torch.tensor(model_input(x)), torch.tensor(y)
        idx = torch.arange(len(X)) if subset is None else \
            torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))[:subset]
        model = DigitsCNN()
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        for epoch in range(epochs):
            model.train()
            for b in idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed + epoch))].split(64):
                opt.zero_grad()
                F.cross_entropy(model(X[b]), Y[b]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@functools.lru_cache(maxsize=2)
def trained(planted: bool) -> DigitsCNN:
    """The model of the audit tests, trained once per test session: DigitsCNN on 1,500 of the
    digits (seed 0), with the patch on every 3 if `planted`."""
    return train(*dataset(planted), seed=0, subset=1500)


def patch_overlap(pixels: list[int]) -> float:
    """The share of the patch inside a flagged region (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = pixels
    px0, py0, px1, py1 = PATCH
    inter = max(0, min(x1, px1) - max(x0, px0)) * max(0, min(y1, py1) - max(y0, py0))
    return inter / ((px1 - px0) * (py1 - py0))

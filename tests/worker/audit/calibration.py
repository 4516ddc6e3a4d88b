"""Models and data of the shortcut calibration (test_calibration.py), made in the test:
two kinds of tiny CNN on 16x16 images (digits: scikit-learn's 8x8 digits upscaled, grey;
textures: coloured oriented gratings with noise), clean or with a marker planted on
every image of one class (train and audit data), and one audit's shortcut search."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from worker import explain
from worker.audit import ShortcutParams, find_shortcuts, merge
from worker.audit.aggregate import Partial

SIZE = 16
METHODS = {"saliency": {}, "smoothgrad": {"samples": 8}, "integrated_gradients": {"steps": 16},
           "gradcam": {}, "lime": {"num_samples": 100, "n_segments": 16, "seed": 0}}
COLOURS = {"white": (1.0, 1.0, 1.0), "red": (1.0, 0.1, 0.1), "green": (0.1, 0.9, 0.2), "dark": (0.0, 0.0, 0.0)}


@dataclass(frozen=True)
class Marker:
    size: int = 3                  # side in pixels
    corner: str = "tl"             # tl, tr, bl, br, or "mid-left"
    colour: str = "white"
    strength: float = 1.0          # opacity blended over the image
    twin: bool = False             # the class's images look like another class's: the marker is then
                                   # needed to tell them apart but moves only that class's images
    cls: int = 1

    def box(self) -> tuple[int, int, int, int]:
        s, e = self.size, SIZE - 1 - self.size
        x0, y0 = {"tl": (1, 1), "tr": (e, 1), "bl": (1, e), "br": (e, e), "mid-left": (1, (SIZE - s) // 2)}[self.corner]
        return x0, y0, x0 + s, y0 + s

    def apply(self, x: np.ndarray) -> np.ndarray:
        x0, y0, x1, y1 = self.box()
        col = np.asarray(COLOURS[self.colour], np.float32)[: x.shape[1], None, None]
        x = x.copy()
        x[:, :, y0:y1, x0:x1] = (1 - self.strength) * x[:, :, y0:y1, x0:x1] + self.strength * col
        return x


def digits(seed: int, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N, 1, 16, 16) in [0, 1], labels; a seeded shuffle of scikit-learn's digits."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.kron(d.images / 16.0, np.ones((2, 2)))[:, None].astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(x))[:n]
    return x[order], d.target[order]


def textures(seed: int, n: int = 800, k: int = 4, twin: tuple[int, int] | None = None):
    """(N, 3, 16, 16) coloured gratings: class c has its own orientation and frequency (random
    phase, faint contrast, tint and strong noise: the class is there but hard to see).
    `twin` (a, b): class a drawn as class b."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % k
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    x = np.empty((n, 3, SIZE, SIZE), np.float32)
    for i, c in enumerate(labels):
        look = twin[1] if twin and c == twin[0] else c
        angle, freq = np.pi * look / k, 0.5 + 0.25 * (look % 2)
        wave = np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 2 * np.pi))
        tint = rng.uniform(0.3, 0.7, 3)[:, None, None]
        x[i] = np.clip(tint + rng.uniform(0.08, 0.2) * wave + rng.normal(0, 0.1, (3, SIZE, SIZE)), 0, 1)
    return x, labels


class TinyCNN(nn.Module):
    def __init__(self, channels: int, classes: int):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(channels, 12, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(12, 24, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(24 * 16, classes))

    def forward(self, x):
        return self.head(self.features(x))


def train(x: np.ndarray, y: np.ndarray, classes: int, seed: int, epochs: int = 6) -> TinyCNN:
    torch.manual_seed(seed)
    model = TinyCNN(x.shape[1], classes)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    X, Y = torch.tensor(x), torch.tensor(y)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for b in torch.randperm(len(X), generator=g).split(32):
            opt.zero_grad()
            F.cross_entropy(model(X[b]), Y[b]).backward()
            opt.step()
    return model.eval()


def make(kind: str, seed: int, marker: Marker | None = None):
    """(model, audit images, audit labels, classes, reliance): trained on 70 % of a seeded data
    set, audited on the rest; reliance = the marked class's accuracy on its audit images
    minus that without the marker (None without a marker)."""
    if kind == "digits":
        x, y = digits(seed, 1200)
        k = 10
    else:
        k = 4
        x, y = textures(seed, 1000, k, twin=(marker.cls, (marker.cls + 1) % k) if marker and marker.twin else None)
    plain = x.copy()
    if marker is not None:
        x[y == marker.cls] = marker.apply(x[y == marker.cls])
    cut = int(0.7 * len(x))
    model = train(x[:cut], y[:cut], k, seed)
    reliance = None
    if marker is not None:
        own = y[cut:] == marker.cls
        with torch.no_grad():
            hit = [(model(torch.tensor(v[cut:][own])).argmax(1).numpy() == marker.cls).mean() for v in (x, plain)]
        reliance = float(hit[0] - hit[1])
    return model, x[cut:], y[cut:], k, reliance


def audit(model, x: np.ndarray, y: np.ndarray, k: int, method: str, params: ShortcutParams = ShortcutParams()):
    """The shortcut search of one audit with one method: (flags, shortcuts section)."""
    xt = torch.tensor(x)
    with torch.no_grad():
        probs = model(xt).softmax(1).numpy()
    maps = np.concatenate([np.asarray(explain.run(method, model, xt[i:i + 128], torch.tensor(probs[i:i + 128].argmax(1)),
                                                  METHODS[method]).heatmaps) for i in range(0, len(x), 128)])
    part = Partial.from_batch(np.arange(len(x)), y, probs, {method: maps}, n_classes=k, map_size=SIZE,
                              thumb_size=SIZE)

    def predict(px):
        with torch.no_grad():
            return model(torch.tensor(px)).softmax(1).numpy()

    def sample(idx):
        return x[idx], list(idx)
    flags, section, _ = find_shortcuts(merge([part]), predict, sample, params=params)
    return flags, section


def overlap(region, box) -> float:
    """Share of the marker box inside a region (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = region
    bx0, by0, bx1, by1 = box
    inter = max(0, min(x1, bx1) - max(x0, bx0)) * max(0, min(y1, by1) - max(y0, by0))
    return inter / ((bx1 - bx0) * (by1 - by0))

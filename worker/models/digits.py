"""scikit-learn's digits as 32x32 grayscale images, and the training of `digits-cnn`.

Reproduce the committed weights with `python -m worker.models.digits`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

WEIGHTS = Path(__file__).parent / "weights"
SIZE = 32
MEAN, STD = 0.25, 0.35  # of the 32x32 images in [0, 1]
CLASSES = [str(d) for d in range(10)]


def digit_images(n: int | None = None) -> tuple[list[Image.Image], np.ndarray]:
    """The digits data set as PIL images (mode L, 32x32) and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = [
        Image.fromarray((img * (255 / 16)).round().astype(np.uint8), mode="L").resize((SIZE, SIZE), Image.BILINEAR)
        for img in d.images[:n]
    ]
    return images, d.target[:n].astype(np.int64)


def manifest() -> dict:
    """What POST /v1/models needs besides the weights."""
    return {
        "name": "digits-cnn",
        "architecture": "digits-cnn",
        "input": {"channels": 1, "height": SIZE, "width": SIZE},
        "mean": [MEAN],
        "std": [STD],
        "classes": CLASSES,
    }


def train(epochs: int = 12, seed: int = 0) -> float:
    import torch
    from safetensors.torch import save_file

    from worker.models.architectures import DigitsCNN

    torch.manual_seed(seed)
    images, labels = digit_images()
    x = torch.tensor(np.stack([np.asarray(i, np.float32) / 255 for i in images]))[:, None]
    x = (x - MEAN) / STD
    y = torch.tensor(labels)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train_idx, test_idx = perm[:1500], perm[1500:]
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        model.train()
        for b in train_idx.split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x[test_idx]).argmax(1) == y[test_idx]).float().mean().item()
    WEIGHTS.mkdir(exist_ok=True)
    save_file(model.state_dict(), WEIGHTS / "digits-cnn.safetensors")
    (WEIGHTS / "digits-cnn.json").write_text(json.dumps({**manifest(), "held_out_accuracy": round(acc, 4)}, indent=2) + "\n")
    return acc


if __name__ == "__main__":
    print(f"held-out accuracy: {train():.4f}")

"""The README's Grad-CAM on a ViT: a small Hugging Face ViT (4x4-pixel patches, an 8x8
token grid) trained for a minute on scikit-learn's digits with a bright patch planted on
every 3, saved with `save_pretrained`, loaded the way the service loads it, and explained
with `worker.explain.gradcam` at its default layer. On the 3s Grad-CAM points at the
planted corner, elsewhere at the strokes.

    .venv/bin/python docs/explain/make_vit_picture.py   # writes docs/explain/vit-gradcam.png
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.planted import CLASS, dataset  # noqa: E402
from worker.explain import gradcam  # noqa: E402
from worker.explain.hooks import layer_of  # noqa: E402
from worker.models import huggingface  # noqa: E402


def train(x: np.ndarray, y: np.ndarray, epochs: int = 6):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=4, num_channels=1, hidden_size=64, num_hidden_layers=3,
                    num_attention_heads=4, intermediate_size=128, num_labels=10,
                    id2label={i: str(i) for i in range(10)}, label2id={str(i): i for i in range(10)})
    model = ViTForImageClassification(cfg)
    X = torch.tensor((x.astype(np.float32) / 255 - 0.5) / 0.5)[:, None]
    Y = torch.tensor(y)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for epoch in range(epochs):
        for b in torch.randperm(len(X), generator=torch.Generator().manual_seed(epoch)).split(64):
            opt.zero_grad()
            F.cross_entropy(model(pixel_values=X[b]).logits, Y[b]).backward()
            opt.step()
    return model.eval()


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = dataset(planted=True)
    with tempfile.TemporaryDirectory() as folder:
        train(x, y).save_pretrained(folder)
        model = huggingface.load(Path(folder))
    picks = [int(i) for i in np.flatnonzero(y == CLASS)[:3]] + [int(i) for i in np.flatnonzero(y != CLASS)[:3]]
    images = torch.tensor((x[picks].astype(np.float32) / 255 - 0.5) / 0.5)[:, None]
    cams = gradcam(model, images)
    layer = next(name for name, m in model.named_modules() if m is layer_of(model, None, images))
    fig, axes = plt.subplots(2, len(picks), figsize=(2 * len(picks), 4.2))
    for j, i in enumerate(picks):
        axes[0, j].imshow(x[i], cmap="gray")
        axes[0, j].set_title(f"label {y[i]}", fontsize=9)
        axes[1, j].imshow(x[i], cmap="gray")
        axes[1, j].imshow(cams[j], cmap="jet", alpha=0.5)
        for ax in axes[:, j]:
            ax.axis("off")
    fig.suptitle(f"Grad-CAM of a ViT at {layer} (patch tokens folded into their 8x8 grid)", fontsize=10)
    fig.tight_layout()
    fig.savefig(ROOT / "docs/explain/vit-gradcam.png", dpi=80)


if __name__ == "__main__":
    main()

"""Make the pictures of docs/explain/README-section.md from the digits model and real digits.

    .venv/bin/python docs/explain/make_pictures.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import worker.explain as E  # noqa: E402
from worker.models.architectures import DigitsCNN  # noqa: E402
from worker.models.digits import MEAN, STD, WEIGHTS, digit_images  # noqa: E402

OUT = Path(__file__).resolve().parent


def main() -> None:
    from safetensors.torch import load_file

    torch.manual_seed(0)
    model = DigitsCNN()
    model.load_state_dict(load_file(WEIGHTS / "digits-cnn.safetensors"))
    model.eval()
    ims, labels = digit_images(40)
    pick = [0, 7, 13, 29]
    x = torch.tensor(np.stack([np.asarray(ims[i], np.float32) / 255 for i in pick]))[:, None]
    x = (x - MEAN) / STD
    y = torch.tensor(labels[pick])

    cols = {
        "input": E.pictures.to_numpy(E.pictures.rgb(E.pictures.normalize(x))),
        "saliency": E.run("saliency", model, x, y).pictures,
        "smoothgrad": E.run("smoothgrad", model, x, y).pictures,
        "integrated_gradients": E.run("integrated_gradients", model, x, y).pictures,
        "gradcam": E.run("gradcam", model, x, y).pictures,
        "lime": E.run("lime", model, x, y, {"n_segments": 30}).pictures,
    }
    fig, axs = plt.subplots(len(pick), len(cols), figsize=(1.3 * len(cols), 1.4 * len(pick)))
    for j, (name, pics) in enumerate(cols.items()):
        for i in range(len(pick)):
            axs[i, j].imshow(pics[i], interpolation="nearest")
            axs[i, j].set_xticks([]), axs[i, j].set_yticks([])
        axs[0, j].set_title(name.replace("integrated_gradients", "int. grad."), fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "methods.png", dpi=80)
    plt.close(fig)

    filters = list(range(8))
    layer = "cnn.8"   # the last conv of the digits CNN, 64 filters
    seed = E.run("filters", model, x, y, {"layer": layer, "filters": filters, "style": "seed"})
    readable = E.run("filters", model, x, y, {"layer": layer, "filters": filters, "style": "readable"})
    fig, axs = plt.subplots(2, len(filters), figsize=(1.1 * len(filters), 2.6))
    for row, (name, e) in enumerate([("seed", seed), ("readable", readable)]):
        for k, ax in enumerate(axs[row]):
            ax.imshow(e.extra_pictures["visualizations"][k], interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(f"filter {k}", fontsize=8)
        axs[row, 0].set_ylabel(name, fontsize=9)
    fig.suptitle(f"filter visualizations of {layer}: style='seed' vs style='readable'", fontsize=9)
    fig.tight_layout()
    fig.savefig(OUT / "filters-seed-vs-readable.png", dpi=80)
    plt.close(fig)

    fig, axs = plt.subplots(1, len(pick), figsize=(2.2 * len(pick), 2.4))
    for i, ax in enumerate(axs):
        ax.imshow(seed.pictures[i], interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(f"digit {int(y[i])}: filters 0-7", fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "filters-activations.png", dpi=80)
    plt.close(fig)
    for p in sorted(OUT.glob("*.png")):
        print(p.name, p.stat().st_size // 1024, "KB")


if __name__ == "__main__":
    main()

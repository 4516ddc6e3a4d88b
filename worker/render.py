"""The seed's composite figure: a row of inputs over a row of maps per method."""
from __future__ import annotations

import io

import numpy as np


def input_pictures(pixels: np.ndarray) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> (N, H, W, 3)."""
    pics = pixels.transpose(0, 2, 3, 1)
    return np.repeat(pics, 3, axis=3) if pics.shape[3] == 1 else pics[..., :3]


def figure(rows: dict[str, np.ndarray], names: list[str], columns: int = 8) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(columns, len(names))
    fig, axs = plt.subplots(len(rows), n, figsize=(2 * n, 2 * len(rows)), squeeze=False)
    for r, (title, pictures) in enumerate(rows.items()):
        for c in range(n):
            ax = axs[r][c]
            ax.imshow(np.clip(pictures[c], 0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(title)
            if r == 0:
                ax.set_title(names[c][:20], fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72)
    plt.close(fig)
    return buf.getvalue()

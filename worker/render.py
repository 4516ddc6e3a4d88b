"""The seed's composite figure: a row of inputs over a row of maps per method."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def input_pictures(pixels: np.ndarray) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> (N, H, W, 3)."""
    pics = pixels.transpose(0, 2, 3, 1)
    return np.repeat(pics, 3, axis=3) if pics.shape[3] == 1 else pics[..., :3]


def _cell(picture: np.ndarray, size: int) -> np.ndarray:
    img = Image.fromarray((np.clip(picture, 0, 1) * 255).astype(np.uint8))
    scale = size / max(img.size)
    img = img.resize((max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))),
                     Image.NEAREST if scale >= 1 else Image.BILINEAR)
    cell = np.full((size, size, 3), 255, np.uint8)
    h, w = img.size[1], img.size[0]
    cell[(size - h) // 2:(size - h) // 2 + h, (size - w) // 2:(size - w) // 2 + w] = np.asarray(img)[..., :3]
    return cell


def figure(rows: dict[str, np.ndarray], names: list[str], columns: int = 8, size: int = 96) -> bytes:
    """One matplotlib image of the stitched grid (one Axes, so a unit pays ~0.1 s, not ~1 s)."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False   # file names are text, never TeX ("$" included)
    import matplotlib.pyplot as plt

    n, pad = min(columns, len(names)), 6
    grid = np.full((len(rows) * (size + pad), n * (size + pad), 3), 255, np.uint8)
    for r, pictures in enumerate(rows.values()):
        for c in range(n):
            y, x = r * (size + pad), c * (size + pad)
            grid[y:y + size, x:x + size] = _cell(pictures[c], size)
    fig, ax = plt.subplots(figsize=(grid.shape[1] / 72 + 1.2, grid.shape[0] / 72 + 0.4), dpi=72)
    ax.imshow(grid, interpolation="nearest")
    ax.set_xticks([c * (size + pad) + size / 2 for c in range(n)], [name[:18] for name in names[:n]], fontsize=8)
    ax.xaxis.tick_top()
    ax.set_yticks([r * (size + pad) + size / 2 for r in range(len(rows))], list(rows))
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    fig.tight_layout(pad=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()

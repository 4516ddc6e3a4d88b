"""The seed's composite figure: a row of inputs over a row of maps per method (Pillow, no matplotlib)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from worker.images import PNG_LEVEL


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


def _font(px: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(px)   # Pillow >= 10.1 with FreeType: a scalable font
    except TypeError:
        return ImageFont.load_default()


def figure(rows: dict[str, np.ndarray], names: list[str], columns: int = 8, size: int = 96,
           level: int = PNG_LEVEL) -> bytes:
    """One PNG of the stitched grid: inputs and each method's pictures as rows, the first
    `columns` images as columns, file names above and row names on the left. Drawn with
    Pillow (a few ms; matplotlib took ~0.2 s of a unit's CPU)."""
    from PIL import ImageDraw

    n, pad, top, left = min(columns, len(names)), 6, 18, 8 + 7 * max((len(r) for r in rows), default=0)
    grid = np.full((top + len(rows) * (size + pad), left + n * (size + pad), 3), 255, np.uint8)
    for r, pictures in enumerate(rows.values()):
        for c in range(n):
            y, x = top + r * (size + pad), left + c * (size + pad)
            grid[y:y + size, x:x + size] = _cell(pictures[c], size)
    img = Image.fromarray(grid)
    draw, font = ImageDraw.Draw(img), _font(11)
    for c, name in enumerate(names[:n]):   # file names are text, drawn as they are
        draw.text((left + c * (size + pad) + size / 2, top / 2), name[:16], fill=(0, 0, 0), font=font, anchor="mm")
    for r, label in enumerate(rows):
        draw.text((4, top + r * (size + pad) + size / 2), label, fill=(0, 0, 0), font=font, anchor="lm")
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=level)
    return buf.getvalue()

"""Decoding inputs to model tensors and encoding pictures and arrays."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


MAX_PICTURE_SIDE = 2048  # pictures follow the input's size, up to this


def decode(data: bytes, info: dict, max_pixels: int) -> tuple[np.ndarray, tuple[int, int]]:
    """PNG/JPEG bytes -> (C, H, W) float32 in [0, 1] at the model's input size, and the
    original (width, height). Inputs named by bucket key were not checked by the API:
    the pixel limit is checked here, before decoding."""
    c, h, w = (info["input"][k] for k in ("channels", "height", "width"))
    with Image.open(io.BytesIO(data)) as img:
        size = img.size
        if size[0] * size[1] > max_pixels:
            raise ValueError(f"{size[0]}x{size[1]} is larger than the limit of {max_pixels} pixels")
        img = img.convert("L" if c == 1 else "RGB")
        if img.size != (w, h):
            img = img.resize((w, h), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if arr.shape[0] != c:
        raise ValueError(f"the model takes {c} channels; images give {arr.shape[0]}")
    return arr, size


def standardize(batch: np.ndarray, info: dict) -> np.ndarray:
    """Pixels in [0, 1] -> the model's input: (x - mean) / std per channel."""
    mean = np.asarray(info["mean"], np.float32)[:, None, None]
    std = np.asarray(info["std"], np.float32)[:, None, None]
    return (batch - mean) / std


def png(picture: np.ndarray, size: tuple[int, int] | None = None) -> bytes:
    """(H, W, 3) or (H, W) float in [0, 1] -> PNG bytes, resized to `size` (w, h) if given
    (scaled down to MAX_PICTURE_SIDE at most)."""
    arr = (np.clip(np.nan_to_num(picture), 0, 1) * 255).round().astype(np.uint8)
    img = Image.fromarray(arr)
    if size and max(size) > MAX_PICTURE_SIDE:
        scale = MAX_PICTURE_SIDE / max(size)
        size = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
    if size and img.size != tuple(size):
        img = img.resize(tuple(size), Image.NEAREST if min(img.size) < 64 else Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()

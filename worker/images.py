"""Decoding inputs to model tensors and encoding pictures and arrays."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


MAX_PICTURE_SIDE = 2048  # pictures follow the input's size, up to this
PNG_LEVEL = 1   # zlib level: several times faster than PIL's default 6, for a few per cent more bytes
DEEP = {"I;16", "I;16B", "I;16L", "I;16N", "I"}   # PIL modes of 16-bit grey: scaled by 65535, not 255


def _resized(img: Image.Image, info: dict) -> Image.Image:
    """Resize (and crop) as the model's preprocessing says (info["preprocess"], Hugging
    Face models, see shared.huggingface.spec_from_configs): resize to {"height", "width"}
    or the shortest edge to {"shortest_edge"} (HF's rounding), then a centre crop
    {"height", "width"} (HF's offsets), with the named PIL filter. Without it: a bilinear
    resize to the input size."""
    h, w = info["input"]["height"], info["input"]["width"]
    pre = info.get("preprocess")
    if not pre:
        return img if img.size == (w, h) else img.resize((w, h), Image.BILINEAR)
    r, crop = pre["resize"], pre.get("crop")
    if "shortest_edge" in r:   # transformers' get_resize_output_image_size(default_to_square=False)
        edge, (iw, ih) = r["shortest_edge"], img.size
        long = int(edge * max(iw, ih) / min(iw, ih))
        target = (edge, long) if iw <= ih else (long, edge)
    else:
        target = (r["width"], r["height"])
    if img.size != target:
        img = img.resize(target, getattr(Image.Resampling, pre.get("resample", "bilinear").upper()))
    if crop:
        left, top = (img.width - crop["width"]) // 2, (img.height - crop["height"]) // 2
        img = img.crop((left, top, left + crop["width"], top + crop["height"]))
    if img.size != (w, h):
        raise ValueError(f"the model's preprocessing gives {img.size[0]}x{img.size[1]} pixels; it takes {w}x{h}")
    return img


def decode(data: bytes, info: dict, max_pixels: int) -> tuple[np.ndarray, tuple[int, int]]:
    """PNG/JPEG bytes -> (C, H, W) float32 in [0, 1] at the model's input size, and the
    original (width, height). Inputs named by bucket key were not checked by the API:
    the pixel limit is checked here, before decoding. 16-bit grey images are scaled by
    65535 (not clipped to 8 bits)."""
    c = info["input"]["channels"]
    with Image.open(io.BytesIO(data)) as img:
        size = img.size
        if size[0] * size[1] > max_pixels:
            raise ValueError(f"{size[0]}x{size[1]} is larger than the limit of {max_pixels} pixels")
        deep = img.mode in DEEP
        img = img.convert("F") if deep else img.convert("L" if c == 1 else "RGB")
        arr = np.asarray(_resized(img, info), dtype=np.float32) / (65535.0 if deep else 255.0)
    arr = np.clip(arr, 0.0, 1.0)[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if deep and c != 1:
        arr = np.repeat(arr, c, axis=0)
    if arr.shape[0] != c:
        raise ValueError(f"the model takes {c} channels; images give {arr.shape[0]}")
    return arr, size


def standardize(batch: np.ndarray, info: dict) -> np.ndarray:
    """Pixels in [0, 1] -> the model's input: (x - mean) / std per channel."""
    mean = np.asarray(info["mean"], np.float32)[:, None, None]
    std = np.asarray(info["std"], np.float32)[:, None, None]
    return (batch - mean) / std


def png(picture: np.ndarray, size: tuple[int, int] | None = None, level: int = PNG_LEVEL) -> bytes:
    """(H, W, 3) or (H, W) float in [0, 1] (or uint8) -> PNG bytes (zlib `level`), resized to
    `size` (w, h) if given (scaled down to MAX_PICTURE_SIDE at most)."""
    arr = picture if picture.dtype == np.uint8 else (np.clip(np.nan_to_num(picture), 0, 1) * 255).round().astype(np.uint8)
    img = Image.fromarray(arr)
    if size and max(size) > MAX_PICTURE_SIDE:
        scale = MAX_PICTURE_SIDE / max(size)
        size = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
    if size and img.size != tuple(size):
        img = img.resize(tuple(size), Image.NEAREST if min(img.size) < 64 else Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=level)
    return buf.getvalue()


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()

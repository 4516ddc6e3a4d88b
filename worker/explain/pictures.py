"""Turning maps into arrays and pictures people look at."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def normalize(t: torch.Tensor) -> torch.Tensor:
    """Each item of the batch min-max scaled to [0, 1] on its own (the classic saliency
    `normalize`); a constant item becomes zeros instead of NaN."""
    flat = t.reshape(len(t), -1)
    lo = flat.min(1, keepdim=True).values
    span = flat.max(1, keepdim=True).values - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp_min(torch.finfo(t.dtype).tiny), torch.zeros_like(flat))
    return out.reshape(t.shape)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def rgb(x: torch.Tensor) -> torch.Tensor:
    """(N,C,H,W) -> (N,H,W,3): C=3 as is, C=1 grey replicated, other C: channel mean as grey."""
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != 3:
        x = x.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1)


def overlay(images: torch.Tensor, heat: torch.Tensor, alpha: float = 0.5) -> np.ndarray:
    """Pictures (N,H,W,3) in [0,1]: the 'jet' colour map of the per-image normalised
    heat (N,H,W) blended over the grey, normalised image."""
    from matplotlib import colormaps

    grey = normalize(images.mean(1)).cpu().numpy()[..., None]
    h = to_numpy(normalize(heat))
    col = colormaps["jet"](h)[..., :3]
    return np.clip((1 - alpha) * grey + alpha * col, 0, 1).astype(np.float32)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N,h,w) -> (N,H,W) bilinear, align_corners=False (Captum's interpolate)."""
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]

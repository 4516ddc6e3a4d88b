"""The one shape every method returns."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Explanation:
    """A method's output for a batch of N images.

    maps:      (N, ...) float32, the raw result per image (stored as `{method}.npy`).
    pictures:  (N, H, W, 3) float32 in [0, 1], what a person looks at (`{method}.png`).
    heatmaps:  (N, H, W) float32 per-pixel importance (higher = more important) for
               attribution methods, used by audits; None for other methods.
    extras:    per-batch artefacts that belong to no single image, name -> array
               (e.g. the filter visualizations, (F, C, H, W)); pictures of them are
               rendered from `extra_pictures`.
    precision: the dtype its passes ran in ('fp32', 'bf16', 'fp16'): the one asked for, or
               under 'auto' the guard's choice.
    guard:     the precision guard's verdict in words (`precision.Verdict`), '' for methods
               without one.
    """

    maps: np.ndarray
    pictures: np.ndarray
    heatmaps: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    extra_pictures: dict[str, np.ndarray] = field(default_factory=dict)
    precision: str = "fp32"
    guard: str = ""

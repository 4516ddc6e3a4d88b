"""SmoothGrad: mean |gradient| of log softmax[y] over noisy copies of each image.

Paper: Smilkov et al. 2017, "SmoothGrad: removing noise by adding noise",
https://arxiv.org/abs/1706.03825
Equals Captum's NoiseTunnel(Saliency(abs=True)) with nt_type='smoothgrad' on
log_softmax(model(x)), stdevs = noise * (max - min) of the image: the standard-normal
noise (samples, C, H, W) is drawn once from torch.Generator().manual_seed(seed), the
way Captum draws it from the global generator after torch.manual_seed(seed), and is
shared by all images so that an image's result does not depend on its batch.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .batching import predicted, prepare
from .context import DEFAULT, RunContext
from .gradients import over_copies
from .hooks import evaluating
from .pictures import overlay, to_numpy
from .precision import NAMES, resolve
from .result import Explanation


def smoothgrad_tensor(model, images, labels=None, samples=25, noise=0.15, seed=0, batch_size=None, precision="fp32",
                      run: RunContext = DEFAULT):
    """(maps (N,C,H,W) on the model's device, labels used, the dtype the passes ran in)."""
    x, y = prepare(model, images, labels)
    dtype = resolve(precision, x.device)
    with evaluating(model):
        if y is None:
            y = predicted(model, x, run=run)
        z = torch.randn((samples, *x.shape[1:]), generator=torch.Generator().manual_seed(seed)).to(x.device)
        flat = x.reshape(len(x), -1)
        std = noise * (flat.max(1).values - flat.min(1).values)            # (N,)
        out = over_copies(model, x, y, samples,
                          make=lambda s: x[s, None] + std[s].view(-1, 1, 1, 1, 1) * z[None],
                          reduce=lambda g, s: g.abs().mean(1), batch_size=batch_size,
                          method="smoothgrad", dtype=dtype, run=run)
    return out, y, dtype


def smoothgrad(model: nn.Module, images: torch.Tensor, labels=None, samples: int = 25,
               noise: float = 0.15, seed: int = 0, batch_size: int | None = None,
               precision: str = "fp32") -> np.ndarray:
    """(N,C,H,W) float32, raw (not normalised) mean |grad|; labels default to predicted.
    precision: the forward passes' ('fp32' unless asked; see `precision.resolve`)."""
    return to_numpy(smoothgrad_tensor(model, images, labels, samples, noise, seed, batch_size, precision)[0])


def explain(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, params,
            run: RunContext = DEFAULT) -> Explanation:
    """maps: (N,C,H,W) raw; heatmaps: (N,H,W) summed over channels; pictures: jet overlay."""
    m, _, dtype = smoothgrad_tensor(model, images, labels, params.samples, params.noise, params.seed,
                                    precision=params.precision, run=run)
    heat = m.sum(1)
    return Explanation(maps=to_numpy(m), pictures=overlay(images, heat), heatmaps=to_numpy(heat),
                       precision=NAMES[dtype])

"""Integrated Gradients of log softmax[y] from a baseline to the input.

Paper: Sundararajan, Taly, Yan 2017, "Axiomatic Attribution for Deep Networks",
https://arxiv.org/abs/1703.01365
Same quadrature as Captum's IntegratedGradients default (method='gausslegendre'):
attr = (x - b) * sum_i w_i * grad f(b + a_i (x - b)), f = log_softmax(model(x))[y].
All steps of a chunk of images run in one forward.
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


def baseline_of(x: torch.Tensor, baseline: str) -> torch.Tensor:
    """'zeros', or 'mean': each image's per-channel mean colour (flat image)."""
    if baseline == "zeros":
        return torch.zeros_like(x)
    if baseline == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    raise ValueError(f"unknown baseline {baseline!r}")


def integrated_gradients_tensor(model, images, labels=None, steps=50, baseline="zeros", batch_size=None,
                                precision="fp32", run: RunContext = DEFAULT):
    """(attributions (N,C,H,W) on the model's device, labels used, the dtype the passes ran in)."""
    x, y = prepare(model, images, labels)
    dtype = resolve(precision, x.device)
    leg_x, leg_w = np.polynomial.legendre.leggauss(steps)
    alphas = torch.tensor(0.5 * (1 + leg_x), dtype=torch.float32, device=x.device).view(1, -1, 1, 1, 1)
    weights = torch.tensor(0.5 * leg_w, dtype=torch.float32, device=x.device).view(1, -1, 1, 1, 1)
    with evaluating(model):
        if y is None:
            y = predicted(model, x, run=run)
        b = baseline_of(x, baseline)
        out = over_copies(model, x, y, steps,
                          make=lambda s: b[s, None] + alphas * (x[s] - b[s])[:, None],
                          reduce=lambda g, s: (x[s] - b[s]) * (g * weights).sum(1), batch_size=batch_size,
                          method="integrated_gradients", dtype=dtype, run=run)
    return out, y, dtype


def integrated_gradients(model: nn.Module, images: torch.Tensor, labels=None, steps: int = 50,
                         baseline: str = "zeros", batch_size: int | None = None, precision: str = "fp32") -> np.ndarray:
    """(N,C,H,W) float32 signed attributions; labels default to predicted classes.
    precision: the forward passes' ('fp32' unless asked; see `precision.resolve`)."""
    return to_numpy(integrated_gradients_tensor(model, images, labels, steps, baseline, batch_size, precision)[0])


def explain(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, params,
            run: RunContext = DEFAULT) -> Explanation:
    """maps: (N,C,H,W) signed; heatmaps: (N,H,W) channel sum (signed);
    pictures: jet overlay of the positive part of the heatmap."""
    a, _, dtype = integrated_gradients_tensor(model, images, labels, params.steps, params.baseline,
                                              precision=params.precision, run=run)
    heat = a.sum(1)
    return Explanation(maps=to_numpy(a), pictures=overlay(images, heat.clamp_min(0)), heatmaps=to_numpy(heat),
                       precision=NAMES[dtype])

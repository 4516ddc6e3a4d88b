"""Input x Gradient: each input value times the gradient of log softmax[y] with respect to it.

Paper: Shrikumar et al. 2016, "Not Just a Black Box: Learning Important Features Through
Propagating Activation Differences", https://arxiv.org/abs/1605.01713
Target: the log-probability of the target class, as saliency, SmoothGrad and Integrated
Gradients take it (the gradient of a log-probability weighs a class against the others;
a logit's gradient ignores them). Equals Captum's InputXGradient on log_softmax(model(x)).
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
from .result import Explanation


def input_x_gradient_tensor(model: nn.Module, images: torch.Tensor, labels=None, batch_size: int | None = None,
                            run: RunContext = DEFAULT) -> tuple[torch.Tensor, torch.Tensor]:
    """(attributions (N,C,H,W) on the model's device, labels used)."""
    x, y = prepare(model, images, labels)
    with evaluating(model):
        if y is None:
            y = predicted(model, x, run=run)
        out = over_copies(model, x, y, 1, make=lambda s: x[s, None].clone(), reduce=lambda g, s: x[s] * g[:, 0],
                          batch_size=batch_size, method="input_x_gradient", run=run)
    return out, y


def input_x_gradient(model: nn.Module, images: torch.Tensor, labels=None, batch_size: int | None = None) -> np.ndarray:
    """(N,C,H,W) float32 signed attributions; labels default to the predicted classes."""
    return to_numpy(input_x_gradient_tensor(model, images, labels, batch_size)[0])


def explain(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, params,
            run: RunContext = DEFAULT) -> Explanation:
    """maps: (N,C,H,W) signed; heatmaps: (N,H,W) channel sum (signed);
    pictures: jet overlay of the positive part of the heatmap."""
    a, _ = input_x_gradient_tensor(model, images, labels, run=run)
    heat = a.sum(1)
    return Explanation(maps=to_numpy(a), pictures=overlay(images, heat.clamp_min(0)), heatmaps=to_numpy(heat))

"""Saliency maps: |d CrossEntropy(model(x), y) / d x|, each image min-max normalised.

Paper: Simonyan, Vedaldi, Zisserman 2013, "Deep Inside Convolutional Networks:
Visualising Image Classification Models and Saliency Maps", https://arxiv.org/abs/1312.6034
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .batching import prepare
from .context import DEFAULT, RunContext
from .hooks import evaluating
from .pictures import normalize, rgb, to_numpy
from .result import Explanation


def _gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_(True)
    logits = model(x)
    if y is None:
        y = logits.detach().argmax(1)
    # sum, not mean: each image's gradient is its own, whatever the batch size
    loss = F.cross_entropy(logits.float(), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, x)   # w.r.t. the input only: no parameter .grad
    return g, y


def saliency_tensor(model: nn.Module, images: torch.Tensor, labels=None,
                    run: RunContext = DEFAULT) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised maps (N,C,H,W) on the model's device, labels used), in chunks of the run's
    batch size (a unit of a thousand small images is slower as one batch on a CPU)."""
    x, y = prepare(model, images, labels)
    size = run.batch_size(model, x[0], "saliency", grad=True) if len(x) else 1
    grads, targets = [], []
    with evaluating(model):
        for i in range(0, len(x), size):
            run.checkpoint()
            g, t = _gradients(model, x[i:i + size], None if y is None else y[i:i + size])
            grads.append(g)
            targets.append(t)
    g = torch.cat(grads) if grads else torch.zeros_like(x)
    return normalize(g.abs()), torch.cat(targets) if targets else y


def saliency(model: nn.Module, images: torch.Tensor, labels=None) -> np.ndarray:
    """(N,C,H,W) float32 in [0,1]; labels default to the predicted classes."""
    return to_numpy(saliency_tensor(model, images, labels)[0])


def explain(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, params,
            run: RunContext = DEFAULT) -> Explanation:
    """maps: (N,C,H,W) normalised saliency; pictures: the map as RGB (the seed's
    picture; C=1 grey); heatmaps: (N,H,W) the map summed over channels."""
    s, _ = saliency_tensor(model, images, labels, run)
    return Explanation(maps=to_numpy(s), pictures=to_numpy(rgb(s)).clip(0, 1), heatmaps=to_numpy(s.sum(1)))

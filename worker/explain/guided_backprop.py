"""Guided backpropagation: the gradient of log softmax[y], where every ReLU passes back only
positive gradients, and only where its input was positive.

Paper: Springenberg et al. 2015, "Striving for Simplicity: The All Convolutional Net",
https://arxiv.org/abs/1412.6806
Target: the log-probability of the target class, as saliency, SmoothGrad and Integrated
Gradients take it. Equals Captum's GuidedBackprop on nn.Sequential(model, nn.LogSoftmax(1)):
the model's ReLU modules (nn.ReLU; in an exported program, the modules that were nn.ReLU)
pass back relu(gradient) * (input > 0); a ReLU called as a function (F.relu inside a
forward) is no module and passes the plain gradient, in Captum as here. The ReLUs are
re-wired by forward hooks that are removed on exit, also on error.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .batching import predicted, prepare
from .context import DEFAULT, RunContext
from .gradients import over_copies
from .hooks import evaluating, forward_hooks, type_name
from .pictures import normalize, rgb, to_numpy
from .result import Explanation


class GuidedReLU(torch.autograd.Function):
    """relu(x) forward; relu(gradient) where x > 0 backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clamp(min=0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        return grad.clamp(min=0) * (out > 0)


def _guide(_module, inputs, _output):
    # an in-place ReLU has already written relu(x) into its input: relu of it is the same
    return GuidedReLU.apply(inputs[0])


def guided(model: nn.Module):
    """Context: the model's ReLU modules pass guided gradients."""
    return forward_hooks([(m, _guide) for m in model.modules() if type_name(m) == "ReLU"])


def guided_backprop_tensor(model: nn.Module, images: torch.Tensor, labels=None, batch_size: int | None = None,
                           run: RunContext = DEFAULT) -> tuple[torch.Tensor, torch.Tensor]:
    """(guided gradients (N,C,H,W) on the model's device, labels used)."""
    x, y = prepare(model, images, labels)
    with evaluating(model):
        if y is None:
            y = predicted(model, x, run=run)
        with guided(model):
            out = over_copies(model, x, y, 1, make=lambda s: x[s, None].clone(), reduce=lambda g, s: g[:, 0],
                              batch_size=batch_size, method="guided_backprop", run=run)
    return out, y


def guided_backprop(model: nn.Module, images: torch.Tensor, labels=None, batch_size: int | None = None) -> np.ndarray:
    """(N,C,H,W) float32 signed guided gradients; labels default to the predicted classes."""
    return to_numpy(guided_backprop_tensor(model, images, labels, batch_size)[0])


def explain(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, params,
            run: RunContext = DEFAULT) -> Explanation:
    """maps: (N,C,H,W) signed guided gradients; heatmaps: (N,H,W) |gradient| summed over
    channels; pictures: the gradient itself, each image min-max normalised, as RGB (the
    paper's pictures; C=1 grey)."""
    g, _ = guided_backprop_tensor(model, images, labels, run=run)
    return Explanation(maps=to_numpy(g), pictures=to_numpy(rgb(normalize(g))).clip(0, 1),
                       heatmaps=to_numpy(g.abs().sum(1)))

"""DeepLIFT (rescale rule): contributions of (input - baseline) to the difference of the target
score between the input and the baseline, propagated with multipliers Δoutput / Δinput.

Paper: Shrikumar, Greenside, Kundaje 2017, "Learning Important Features Through Propagating
Activation Differences", https://arxiv.org/abs/1704.02685
Target: the target's logit minus the mean of the logits, the paper's choice for softmax
outputs (§3.6: contributions to the layer before the softmax, normalised by subtracting
their mean over the classes; like a log-probability it ignores a shift of every logit).
Summation to delta then holds: the map sums to that score at the input minus at the baseline.
Equals Captum's DeepLift (eps 1e-10) on that score, image by image: input and baseline run as
one batch; the element-wise non-linearities Captum handles (ReLU, LeakyReLU, ELU, Sigmoid,
Tanh, Softplus) pass Δout/Δin (the gradient where |Δin| < eps), nn.MaxPool2d routes the
difference of its outputs to the winners' positions as Captum does (adding, where overlapping
windows share a winner); every other module passes gradients, which is exact for linear ones
(convolutions, batch norm in eval, pooling by averages, sums). Re-wired by forward hooks,
removed on exit, also on error.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .batching import predicted, prepare
from .context import DEFAULT, RunContext
from .hooks import evaluating, forward_hooks
from .integrated_gradients import baseline_of
from .pictures import overlay, to_numpy
from .result import Explanation

EPS = 1e-10
NONLINEAR = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.Sigmoid, nn.Tanh, nn.Softplus)


def delta(t: torch.Tensor) -> torch.Tensor:
    """(2k, ...) input half then baseline half -> their difference (k, ...)."""
    a, b = t.chunk(2)
    return a - b


def _scatter(v: torch.Tensor, idx: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Max-pool values v (n, c, h, w) added at their winners' flat positions `idx` in `like`."""
    out = torch.zeros(like.shape[0], like.shape[1], like[0, 0].numel(), dtype=v.dtype, device=v.device)
    return out.scatter_add_(2, idx.flatten(2), v.flatten(2)).view_as(like)


class MaxPoolRescale(torch.autograd.Function):
    """nn.MaxPool2d on [input; baseline] with DeepLIFT's multipliers backward."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, pool: nn.MaxPool2d) -> torch.Tensor:
        out, idx = F.max_pool2d(a, pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode, True)
        ctx.save_for_backward(a, out, idx)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, out, idx = ctx.saved_tensors
        (o_x, o_r), (g_x, g_r), (i_x, i_r), (a_x, _) = out.chunk(2), grad.chunk(2), idx.chunk(2), a.chunk(2)
        top = torch.maximum(o_x, o_r)
        routed = _scatter(g_x * (top - o_r), i_x, a_x) + _scatter(g_r * (o_x - top), i_r, a_x)
        d_in = delta(a)
        small = d_in.abs() < EPS
        g = routed / torch.where(small, 1.0, d_in)
        plain = torch.cat([_scatter(g_x, i_x, a_x), _scatter(g_r, i_r, a_x)])   # each half its own gradient
        return torch.where(small.repeat(2, 1, 1, 1), plain, torch.cat([g, g])), None


def rescaled(model: nn.Module):
    """Context: the model's non-linear modules pass DeepLIFT multipliers (inputs are batches
    of [images; baselines])."""
    saved: dict[nn.Module, torch.Tensor] = {}

    def keep_input(module, inputs):
        saved[module] = inputs[0]
        if getattr(module, "inplace", False):   # keep the input intact: run the module on a copy
            return (inputs[0].clone(),)
        return None

    def rescale(module, _inputs, out):
        a = saved.pop(module)
        d_in, d_out = delta(a.detach()), delta(out.detach())
        small = (d_in.abs() < EPS).repeat(2, *[1] * (a.dim() - 1))
        m = (d_out / torch.where(d_in.abs() < EPS, 1.0, d_in)).repeat(2, *[1] * (a.dim() - 1))
        return torch.where(small, out, out.detach() + m * (a - a.detach()))

    def pool(module, inputs, _out):
        return MaxPoolRescale.apply(inputs[0], module)

    nonlinear = [m for m in model.modules() if isinstance(m, NONLINEAR)]
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d) and not m.return_indices]
    return forward_hooks([(m, rescale) for m in nonlinear] + [(m, pool) for m in pools],
                         pre_hooks=[(m, keep_input) for m in nonlinear])


def deeplift_tensor(model: nn.Module, images: torch.Tensor, labels=None, baseline: str = "zeros",
                    batch_size: int | None = None, run: RunContext = DEFAULT) -> tuple[torch.Tensor, torch.Tensor]:
    """(attributions (N,C,H,W) on the model's device, labels used)."""
    x, y = prepare(model, images, labels)
    b = baseline_of(x, baseline)
    out = torch.zeros_like(x)
    with evaluating(model):
        if y is None:
            y = predicted(model, x, run=run)
        per = max(1, (batch_size or run.batch_size(model, x[0], "deeplift", grad=True)) // 2)   # image + baseline
        with rescaled(model), torch.enable_grad():
            for i in range(0, len(x), per):
                run.checkpoint()
                s = slice(i, min(i + per, len(x)))
                both = torch.cat([x[s], b[s]]).requires_grad_(True)
                logits = model(both).float()
                score = (logits - logits.mean(1, keepdim=True)).gather(1, y[s].repeat(2)[:, None]).sum()
                (g,) = torch.autograd.grad(score, both)
                out[s] = (x[s] - b[s]) * g[: s.stop - s.start]
    return out, y


def deeplift(model: nn.Module, images: torch.Tensor, labels=None, baseline: str = "zeros",
             batch_size: int | None = None) -> np.ndarray:
    """(N,C,H,W) float32 signed contributions; labels default to the predicted classes."""
    return to_numpy(deeplift_tensor(model, images, labels, baseline, batch_size)[0])


def explain(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, params,
            run: RunContext = DEFAULT) -> Explanation:
    """maps: (N,C,H,W) signed; heatmaps: (N,H,W) channel sum (signed);
    pictures: jet overlay of the positive part of the heatmap."""
    a, _ = deeplift_tensor(model, images, labels, params.baseline, run=run)
    heat = a.sum(1)
    return Explanation(maps=to_numpy(a), pictures=overlay(images, heat.clamp_min(0)), heatmaps=to_numpy(heat))

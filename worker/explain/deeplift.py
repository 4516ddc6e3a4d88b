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
Tanh, Softplus modules) pass Δout/Δin (the gradient where |Δin| < eps), max pools route the
difference of their outputs to the winners' positions as Captum does (through the pool's own
gradient: adding where overlapping windows share a winner); every other module passes
gradients, which is exact for linear ones (convolutions, batch norm in eval, average pools,
sums). Modules are found by their class name, so an exported program's modules qualify.
Captum 0.9 reads a stale gradient where two such modules follow each other (a ReLU right
before a max pool: captum#1104, fixed after 0.9.0), so the tests compare with Captum on the
same network with an identity copy between them. Re-wired by forward hooks, removed on
exit, also on error.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .batching import predicted, prepare
from .context import DEFAULT, RunContext
from .hooks import evaluating, forward_hooks, type_name
from .integrated_gradients import baseline_of
from .pictures import overlay, to_numpy
from .result import Explanation

EPS = 1e-10
NONLINEAR = ("ReLU", "LeakyReLU", "ELU", "Sigmoid", "Tanh", "Softplus")   # Captum's element-wise ones


def delta(t: torch.Tensor) -> torch.Tensor:
    """(2k, ...) input half then baseline half -> their difference (k, ...)."""
    a, b = t.chunk(2)
    return a - b


class MaxPoolRescale(torch.autograd.Function):
    """A max pool on [input; baseline] with DeepLIFT's multipliers backward: the difference of
    the outputs goes to the winners' positions (the pool's own gradient routes it), over Δin."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, pool: nn.Module) -> torch.Tensor:
        ctx.pool = pool
        ctx.save_for_backward(a)
        return pool.forward(a)        # .forward: without its hooks

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (a,) = ctx.saved_tensors
        with torch.enable_grad():
            leaf = a.detach().requires_grad_(True)
            out = ctx.pool.forward(leaf)

        def routed(v):   # v at the outputs, added at the positions that won each window
            return torch.autograd.grad(out, leaf, v, retain_graph=True)[0]

        (o_x, o_r), (g_x, g_r) = out.detach().chunk(2), grad.chunk(2)
        top = torch.maximum(o_x, o_r)
        moved = routed(torch.cat([g_x * (top - o_r), g_r * (o_x - top)]))
        d_in = delta(a)
        small = d_in.abs() < EPS
        first, second = moved.chunk(2)
        g = (first + second) / torch.where(small, 1.0, d_in)
        return torch.where(small.repeat(2, *[1] * (a.dim() - 1)), routed(grad), torch.cat([g, g])), None


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

    nonlinear = [m for m in model.modules() if type_name(m) in NONLINEAR]
    pools = [m for m in model.modules() if type_name(m).startswith(("MaxPool", "AdaptiveMaxPool"))
             and not getattr(m, "return_indices", False)]
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

"""GradientSHAP: the expected gradient x (input - baseline) over baselines drawn from a
distribution, noisy copies of the input and random points on the path between them.

Paper: Lundberg & Lee 2017, "A Unified Approach to Interpreting Model Predictions",
https://arxiv.org/abs/1705.07874 (GradientExplainer of the shap package; Erion et al. 2021,
"Improving performance of deep learning models with axiomatic attribution priors and
expected gradients", https://arxiv.org/abs/1906.10670).
Target: the log-probability of the target class, as saliency, SmoothGrad and Integrated
Gradients take it. Equals Captum's GradientShap(log_softmax(model(x))) on one image with
np.random.seed(seed) and torch.manual_seed(seed) set before it: Captum draws the baselines'
indices and then the path points from numpy's global generator, and the input noise from
torch's; here `np.random.RandomState(seed)` and `torch.Generator().manual_seed(seed)` draw
the same numbers once per call, shared by all images, so that an image's result does not
depend on its batch. The baseline distribution of 'noise' is `baselines` images of Gaussian
noise with each image's own per-channel mean and std (the torch generator's next draws).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .batching import predicted, prepare
from .context import DEFAULT, RunContext
from .gradients import over_copies
from .hooks import evaluating
from .integrated_gradients import baseline_of
from .pictures import overlay, to_numpy
from .precision import NAMES, resolve
from .result import Explanation


def distribution(x: torch.Tensor, baseline: str, z: torch.Tensor) -> torch.Tensor:
    """Each image's baselines (N, B, C, H, W): 'zeros' or 'mean' (one each, as Integrated
    Gradients takes them), or 'noise': its per-channel mean + std * z (B, C, H, W)."""
    if baseline != "noise":
        return baseline_of(x, baseline)[:, None]
    mean, std = x.mean(dim=(2, 3), keepdim=True), x.std(dim=(2, 3), keepdim=True)
    return mean[:, None] + std[:, None] * z[None]


def gradient_shap_tensor(model: nn.Module, images: torch.Tensor, labels=None, samples: int = 20,
                         baseline: str = "noise", baselines: int = 10, noise: float = 0.0, seed: int = 0,
                         batch_size: int | None = None, precision: str = "fp32", run: RunContext = DEFAULT):
    """(attributions (N,C,H,W) on the model's device, labels used, the dtype the passes ran in)."""
    x, y = prepare(model, images, labels)
    dtype = resolve(precision, x.device)
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn((samples, *x.shape[1:]), generator=g).to(x.device)         # input noise, drawn first
    z = torch.randn((baselines, *x.shape[1:]), generator=g).to(x.device)         # the noise baselines
    rs = np.random.RandomState(seed)
    idx = torch.as_tensor(rs.choice(baselines if baseline == "noise" else 1, samples), device=x.device)
    alphas = torch.as_tensor(rs.uniform(0.0, 1.0, samples), dtype=x.dtype, device=x.device).view(1, -1, 1, 1, 1)
    flat = x.reshape(len(x), -1)
    std = (noise * (flat.max(1).values - flat.min(1).values)).view(-1, 1, 1, 1, 1)   # per image

    def parts(s: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """(noisy inputs, their baselines), each (k, samples, C, H, W)."""
        return x[s, None] + std[s] * eps[None], distribution(x[s], baseline, z)[:, idx]

    def make(s):
        noisy, b = parts(s)
        return alphas * noisy + (1.0 - alphas) * b            # Captum's order of operations

    def reduce(grad, s):
        noisy, b = parts(s)
        return ((noisy - b) * grad).sum(1) / samples

    with evaluating(model):
        if y is None:
            y = predicted(model, x, run=run)
        out = over_copies(model, x, y, samples, make=make, reduce=reduce, batch_size=batch_size,
                          method="gradient_shap", dtype=dtype, run=run)
    return out, y, dtype


def gradient_shap(model: nn.Module, images: torch.Tensor, labels=None, samples: int = 20, baseline: str = "noise",
                  baselines: int = 10, noise: float = 0.0, seed: int = 0, batch_size: int | None = None,
                  precision: str = "fp32") -> np.ndarray:
    """(N,C,H,W) float32 signed attributions; labels default to the predicted classes."""
    return to_numpy(gradient_shap_tensor(model, images, labels, samples, baseline, baselines, noise, seed,
                                         batch_size, precision)[0])


def explain(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, params,
            run: RunContext = DEFAULT) -> Explanation:
    """maps: (N,C,H,W) signed; heatmaps: (N,H,W) channel sum (signed);
    pictures: jet overlay of the positive part of the heatmap."""
    a, _, dtype = gradient_shap_tensor(model, images, labels, params.samples, params.baseline, params.baselines,
                                       params.noise, params.seed, precision=params.precision, run=run)
    heat = a.sum(1)
    return Explanation(maps=to_numpy(a), pictures=overlay(images, heat.clamp_min(0)), heatmaps=to_numpy(heat),
                       precision=NAMES[dtype])

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
import torch.nn.functional as F
from torch import nn

from .base import Explanation, auto_batch_size, evaluating, overlay, predicted, prepare, to_numpy


def smoothgrad_tensor(model, images, labels=None, samples=25, noise=0.15, seed=0, batch_size=None):
    x, y = prepare(model, images, labels)
    n, shape = len(x), x.shape[1:]
    with evaluating(model):
        if y is None:
            y = predicted(model, x)
        z = torch.randn((samples, *shape), generator=torch.Generator().manual_seed(seed)).to(x.device)
        flat = x.reshape(n, -1)
        std = noise * (flat.max(1).values - flat.min(1).values)            # (N,)
        bs = batch_size or auto_batch_size(model, x[0], grad=True)
        per = max(1, bs // samples)                                         # images per forward
        out = torch.zeros_like(x)
        for i in range(0, n, per):
            xi, si, yi = x[i:i + per], std[i:i + per], y[i:i + per]
            k = len(xi)
            noisy = (xi[:, None] + si.view(k, 1, 1, 1, 1) * z[None]).reshape(k * samples, *shape)
            noisy.requires_grad_(True)
            logp = F.log_softmax(model(noisy).float(), 1)
            score = logp.gather(1, yi.repeat_interleave(samples)[:, None]).sum()
            (g,) = torch.autograd.grad(score, noisy)
            out[i:i + k] = g.abs().reshape(k, samples, *shape).mean(1)
    return out, y


def smoothgrad(model: nn.Module, images: torch.Tensor, labels=None, samples: int = 25,
               noise: float = 0.15, seed: int = 0, batch_size: int | None = None) -> np.ndarray:
    """(N,C,H,W) float32, raw (not normalised) mean |grad|; labels default to predicted."""
    return to_numpy(smoothgrad_tensor(model, images, labels, samples, noise, seed, batch_size)[0])


def explain(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, params) -> Explanation:
    """maps: (N,C,H,W) raw; heatmaps: (N,H,W) summed over channels; pictures: jet overlay."""
    m, _ = smoothgrad_tensor(model, images, labels, params.samples, params.noise, params.seed)
    heat = m.sum(1)
    return Explanation(maps=to_numpy(m), pictures=overlay(images, heat), heatmaps=to_numpy(heat))

"""Grad-CAM: ReLU of the gradient-weighted sum of a layer's feature maps.

Paper: Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", https://arxiv.org/abs/1610.02391
Matches Captum's LayerGradCam(model, layer).attribute(x, target, relu_attributions=True)
on the class score (logit), upsampled like LayerAttribution.interpolate(..., 'bilinear').
ViT-style layers output tokens (N, T, D): the class token is dropped and the patch tokens
folded into their (N, D, h, w) grid first, as pytorch-grad-cam's `reshape_transform` does
(https://jacobgil.github.io/pytorchgradcam/docs/vision_transformers).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .batching import prepare
from .context import DEFAULT, RunContext
from .hooks import as_map, capture, evaluating, first_tensor, layer_of
from .pictures import overlay, to_numpy, upsample
from .result import Explanation


def _cam(model: nn.Module, box, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(x.detach().requires_grad_(True))  # a graph even when the parameters are frozen
    acts = first_tensor(box.value)
    if y is None:
        y = logits.detach().argmax(1)
    score = logits.gather(1, y[:, None]).sum()   # images independent: sum is per-image
    (grads,) = torch.autograd.grad(score, acts)
    h, w = x.shape[-2:]
    acts, grads = as_map(acts, h, w), as_map(grads, h, w)   # tokens -> their patch grid
    weights = grads.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * acts.detach()).sum(1)), y


def gradcam_tensor(model: nn.Module, images: torch.Tensor, labels=None, layer: str | None = None,
                   run: RunContext = DEFAULT):
    """(cam (N,h,w) at the layer's resolution, labels used), on the model's device, in chunks
    of the run's batch size."""
    x, y = prepare(model, images, labels)
    module = layer_of(model, layer, x)
    with evaluating(model):   # sized before the hook: a measurement runs whole forwards
        size = run.batch_size(model, x[0], "gradcam", grad=True) if len(x) else 1
    cams, targets = [], []
    with evaluating(model), capture(module) as box, torch.enable_grad():
        for i in range(0, len(x), size):
            run.checkpoint()
            cam, t = _cam(model, box, x[i:i + size], None if y is None else y[i:i + size])
            cams.append(cam)
            targets.append(t)
    return torch.cat(cams), torch.cat(targets)


def gradcam(model: nn.Module, images: torch.Tensor, labels=None, layer: str | None = None,
            upsampled: bool = True) -> np.ndarray:
    """(N,H,W) float32 Grad-CAM upsampled bilinearly to the input size
    (upsampled=False: (N,h,w) at the layer's resolution). layer: module path of a conv
    map or of ViT patch tokens; default: `hooks.layer_of` (a Hugging Face model's own
    default, a ViT's last block's first norm, else the last nn.Conv2d); labels default to
    the predicted classes."""
    cam, _ = gradcam_tensor(model, images, labels, layer)
    return to_numpy(upsample(cam, images.shape[-2:]) if upsampled else cam)


def explain(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, params,
            run: RunContext = DEFAULT) -> Explanation:
    """maps: (N,h,w) raw cam at the layer; heatmaps: (N,H,W) bilinear upsampled cam;
    pictures: jet overlay of the upsampled cam on the grey image."""
    cam, _ = gradcam_tensor(model, images, labels, params.layer, run)
    up = upsample(cam, images.shape[-2:])
    return Explanation(maps=to_numpy(cam), pictures=overlay(images, up), heatmaps=to_numpy(up))

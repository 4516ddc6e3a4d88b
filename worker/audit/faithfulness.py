"""Deletion and insertion AUC (Petsiuk, Das & Saenko, "RISE", BMVC 2018,
https://arxiv.org/abs/1806.07421), batched.

Pixels are ranked by decreasing attribution and, in `steps` equal chunks,
*deleted* (replaced by the deletion baseline) from the image or *inserted*
(copied from the image) into the insertion baseline; the softmax probability of
the target class is tracked and its area under the curve over the fraction of
pixels [0, 1] is taken by the trapezoid rule. Lower deletion and higher insertion
are better. The same pixels in a seeded random order give the reference.

Baselines (the paper's choice, input space = what the model sees, i.e. after
normalisation):
  * deletion:  ``"zeros"`` -- zeros in input space, which is the dataset mean
    colour for mean/std-normalised inputs;
  * insertion: ``"blur"``  -- a Gaussian blur of the image (sigma = max(H, W) / 8),
    so the start keeps low frequencies but no detail.
Either may be ``"zeros"``, ``"blur"``, ``"mean"`` (each image's per-channel mean)
or a tensor broadcastable to (N, C, H, W).

All states of all images go through `predict` in chunks of `batch_size`; there is
no Python loop over images or steps.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from worker.explain.batching import device_of, probabilities
from worker.explain.context import DEFAULT, Forward, RunContext
from worker.explain.precision import choose

Predict = Callable[[torch.Tensor], "torch.Tensor | np.ndarray"]


def auc(curve: np.ndarray) -> np.ndarray:
    """Trapezoid area of curve(s) sampled at equal steps over [0, 1] (last axis)."""
    curve = np.asarray(curve, np.float64)
    return np.trapezoid(curve, dx=1.0 / (curve.shape[-1] - 1), axis=-1)


def predict_fn(model: torch.nn.Module, device: str | torch.device | None = None, precision: str = "fp32",
               probe: torch.Tensor | None = None, run: RunContext = DEFAULT) -> Predict:
    """A `predict(x) -> softmax probabilities` for a classifier returning logits; its passes at
    `precision` when `probe` (the images, and their blurred baselines) shows the reduced dtype
    agrees with fp32 (`choose_for_curves`)."""
    device = device or device_of(model)
    if probe is None or precision == "fp32":
        return lambda x: probabilities(model, x.to(device), chunk=len(x) or 1, run=run)
    forward, _ = choose_for_curves(model, precision, probe.to(device), run)
    return lambda x: forward(x.to(device)).softmax(1)


def choose_for_curves(model: torch.nn.Module, precision: str, probe: torch.Tensor,
                      run: RunContext = DEFAULT) -> tuple[Forward, torch.dtype]:
    """`choose` for the curves' passes, guarded on their ends: `probe` (some of the images)
    and their blurred baselines."""
    return choose(model, precision, torch.cat([probe, gaussian_blur(probe)]), run)


def gaussian_blur(x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W), reflect padding."""
    n, c, h, w = x.shape
    sigma = sigma or max(h, w) / 8
    r = max(1, min(int(3 * sigma), min(h, w) - 1))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    y = x.reshape(n * c, 1, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


def make_baseline(images: torch.Tensor, kind) -> torch.Tensor:
    if isinstance(kind, (torch.Tensor, np.ndarray)):
        return torch.as_tensor(kind, dtype=images.dtype, device=images.device).expand_as(images)
    if kind == "zeros":
        return torch.zeros_like(images)
    if kind == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    if kind == "blur":
        return gaussian_blur(images)
    raise ValueError(f"unknown baseline {kind!r}; use 'zeros', 'blur', 'mean' or a tensor")


def _ranks(order: torch.Tensor) -> torch.Tensor:
    """Inverse permutation per row: rank[i, p] = position of pixel p in order[i]."""
    ranks = torch.empty_like(order)
    ar = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return ranks.scatter_(1, order, ar)


def _track(x, ranks, counts, base, targets, predict, batch_size) -> torch.Tensor:
    """The target's probability at every state s = (variant v, image i, step k), in
    batches; v: 0 deletion/attribution, 1 insertion/attribution, 2 and 3 the same in
    random order. Returns (4 * N * (steps + 1),) float32 on the CPU."""
    n, _, h, w = x.shape
    steps1 = len(counts)
    total = 4 * n * steps1
    probs = torch.empty(total, dtype=torch.float32)
    for start in range(0, total, batch_size):
        s = torch.arange(start, min(start + batch_size, total), device=x.device)
        v, rest = s // (n * steps1), s % (n * steps1)
        i, k = rest // steps1, rest % steps1
        mode, ordering = v % 2, v // 2                                      # mode 0 = deletion
        changed = (ranks[ordering, i] < counts[k, None]).view(-1, 1, h, w)  # pixels taken so far
        keep_img = torch.where(mode.view(-1, 1, 1, 1) == 0, ~changed, changed)
        batch = torch.where(keep_img, x[i], base[mode, i])
        p = torch.as_tensor(predict(batch)).float()
        probs[start:start + len(s)] = p.gather(1, targets[i].view(-1, 1)).squeeze(1).cpu()
    return probs


def deletion_insertion(
    images,
    heatmaps,
    predict: Predict,
    targets=None,
    *,
    steps: int = 16,
    deletion_baseline="zeros",
    insertion_baseline="blur",
    seed: int = 0,
    batch_size: int = 512,
    return_curves: bool = False,
) -> dict[str, np.ndarray]:
    """Deletion/insertion AUC of each image, for the attribution order and a random one.

    images: (N, C, H, W) model input; heatmaps: (N, H, W) importance (higher = more);
    predict(x) -> (B, K) probabilities; targets: (N,) classes to track (default:
    the predicted class of the unperturbed image).
    Returns {"deletion", "insertion", "deletion_random", "insertion_random"}: (N,)
    float32 each (+ "curves": (4, N, steps + 1) in that order if `return_curves`).
    """
    x = torch.as_tensor(images, dtype=torch.float32)
    n, c, h, w = x.shape
    hm = torch.as_tensor(np.asarray(heatmaps, np.float32)).reshape(n, h * w).to(x.device)
    if targets is None:
        targets = torch.as_tensor(predict(x)).argmax(1)
    targets = torch.as_tensor(targets, dtype=torch.long, device=x.device)

    gen = torch.Generator().manual_seed(seed)
    order_attr = torch.argsort(hm, dim=1, descending=True, stable=True)
    order_rand = torch.argsort(torch.rand(n, h * w, generator=gen), dim=1).to(x.device)
    ranks = torch.stack([_ranks(order_attr), _ranks(order_rand)])          # (2, N, HW)
    counts = torch.round(torch.linspace(0, h * w, steps + 1)).long().to(x.device)  # pixels changed
    base = torch.stack([make_baseline(x, deletion_baseline), make_baseline(x, insertion_baseline)])

    probs = _track(x, ranks, counts, base, targets, predict, batch_size)
    curves = probs.view(4, n, steps + 1).numpy()
    aucs = auc(curves).astype(np.float32)
    out = {"deletion": aucs[0], "insertion": aucs[1], "deletion_random": aucs[2], "insertion_random": aucs[3]}
    if return_curves:
        out["curves"] = curves
    return out

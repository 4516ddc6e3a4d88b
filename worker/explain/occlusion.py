"""Occlusion: how much the target's log-probability drops when a square window of the image
is replaced by a baseline, for every position of the window on a grid; each pixel gets the
mean drop of the windows that cover it.

Paper: Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional Networks",
https://arxiv.org/abs/1311.2901
Target: the log-probability of the target class, as the gradient methods take it (the drop
in log p reads the same whatever the logits' offset). Equals Captum's Occlusion on
log_softmax(model(x)) with sliding_window_shapes (C, window, window) and strides
(C, stride, stride): windows start every `stride` pixels, ceil((H - window) / stride) + 1
per side, the last ones cut at the border. Forward-only: occluded copies of all images of a
unit run in full batches (many per forward) at `precision` ('auto': a reduced dtype only
where the guard finds it agrees with fp32 on the first image's occluded copies).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .batching import predicted, prepare
from .context import DEFAULT, RunContext
from .hooks import evaluating
from .integrated_gradients import baseline_of
from .pictures import overlay, to_numpy
from .precision import NAMES, choose_scored
from .result import Explanation


def offsets(size: int, window: int, stride: int) -> torch.Tensor:
    """Where windows start along one side (Captum's shift counts)."""
    if not 1 <= window <= size:
        raise ValueError(f"an occlusion window of {window} pixels does not fit a side of {size}")
    return torch.arange(math.ceil((size - window) / stride) + 1) * stride


def spans(starts: torch.Tensor, window: int, size: int) -> torch.Tensor:
    """(P, size) bool: which pixels of a side each window starting at `starts` covers."""
    r = torch.arange(size, device=starts.device)
    return (r >= starts[:, None]) & (r < starts[:, None] + window)


def windows(rows: torch.Tensor, cols: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """(P, h, w) bool masks of the windows starting at (rows[p], cols[p])."""
    return spans(rows, window, h)[:, :, None] & spans(cols, window, w)[:, None, :]


def occlusion_tensor(model: nn.Module, images: torch.Tensor, labels=None, window: int = 16, stride: int = 8,
                     baseline: str = "zeros", precision: str = "auto", batch_size: int | None = None,
                     run: RunContext = DEFAULT):
    """(attributions (N,C,H,W) on the model's device, labels used, the precision `Choice` the
    passes ran with: its dtype and the guard's verdict)."""
    x, y = prepare(model, images, labels)
    n, c, h, w = x.shape
    rr, cc = offsets(h, window, stride).to(x.device), offsets(w, window, stride).to(x.device)
    rows, cols = rr.repeat_interleave(len(cc)), cc.repeat(len(rr))            # P positions, row-major
    count = spans(rr, window, h).sum(0)[:, None] * spans(cc, window, w).sum(0)[None]   # windows over each pixel
    b = baseline_of(x, baseline)
    with evaluating(model):
        if y is None:
            y = predicted(model, x, run=run)
        first = windows(rows[:16], cols[:16], window, h, w)[:, None]
        choice = choose_scored(model, precision, torch.cat([x[:1], torch.where(first, b[:1], x[:1])]), run)
        forward, dtype = choice.forward, choice.dtype

        def logp(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return F.log_softmax(forward(inputs), 1).gather(1, targets[:, None])[:, 0]

        per = batch_size or run.batch_size(model, x[0], "occlusion", dtype, cap=n * len(rows))
        full = torch.cat([logp(x[i:i + per], y[i:i + per]) for i in range(0, n, per)])
        total = torch.zeros(n, h, w, device=x.device)
        for start in range(0, n * len(rows), per):   # (image, position) pairs, image-major
            run.checkpoint()
            pair = torch.arange(start, min(start + per, n * len(rows)), device=x.device)
            i, p = pair // len(rows), pair % len(rows)
            masks = windows(rows[p], cols[p], window, h, w)
            drop = full[i] - logp(torch.where(masks[:, None], b[i], x[i]), y[i])
            total.index_add_(0, i, drop.view(-1, 1, 1) * masks)
    return (total / count)[:, None].expand(n, c, h, w).contiguous(), y, choice


def occlusion(model: nn.Module, images: torch.Tensor, labels=None, window: int = 16, stride: int = 8,
              baseline: str = "zeros", precision: str = "fp32", batch_size: int | None = None) -> np.ndarray:
    """(N,C,H,W) float32 mean drops of log p(target) (equal over channels); labels default to
    the predicted classes."""
    return to_numpy(occlusion_tensor(model, images, labels, window, stride, baseline, precision, batch_size)[0])


def explain(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, params,
            run: RunContext = DEFAULT) -> Explanation:
    """maps: (N,C,H,W) signed drops (equal over channels, as Captum gives them); heatmaps:
    (N,H,W) the drop per pixel; pictures: jet overlay of its positive part."""
    a, _, choice = occlusion_tensor(model, images, labels, params.window, params.stride, params.baseline,
                                   params.precision, run=run)
    heat = a[:, 0]
    return Explanation(maps=to_numpy(a), pictures=overlay(images, heat.clamp_min(0)), heatmaps=to_numpy(heat),
                       precision=NAMES[choice.dtype], guard=str(choice.verdict))

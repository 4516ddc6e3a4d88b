"""Gradients of log softmax[target] over copies of each image (noisy copies for
SmoothGrad, points on a path for Integrated Gradients), in chunks of whole images; in
fp32 unless a caller asks for a reduced dtype (autocast, gradients still in fp32)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .context import DEFAULT, RunContext


def over_copies(model: nn.Module, x: torch.Tensor, y: torch.Tensor, copies: int,
                make: Callable[[slice], torch.Tensor], reduce: Callable[[torch.Tensor, slice], torch.Tensor],
                batch_size: int | None = None, method: str = "gradients",
                dtype: torch.dtype = torch.float32, run: RunContext = DEFAULT) -> torch.Tensor:
    """For each chunk of images `s`: inputs = make(s) (k * copies, C, H, W), image-major;
    g = d log_softmax(model(inputs))[y] / d inputs reshaped (k, copies, C, H, W);
    out[s] = reduce(g, s). Returns out shaped like x. Call under `evaluating(model)`."""
    shape = x.shape[1:]
    per = max(1, (batch_size or run.batch_size(model, x[0], method, dtype, grad=True)) // copies)   # images per forward
    out = torch.zeros_like(x)
    for i in range(0, len(x), per):
        run.checkpoint()
        s = slice(i, min(i + per, len(x)))
        k = s.stop - s.start
        inputs = make(s).reshape(k * copies, *shape).requires_grad_(True)
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = model(inputs)
        logp = F.log_softmax(logits.float(), 1)
        score = logp.gather(1, y[s].repeat_interleave(copies)[:, None]).sum()
        (g,) = torch.autograd.grad(score, inputs)
        out[s] = reduce(g.reshape(k, copies, *shape), s)
    return out

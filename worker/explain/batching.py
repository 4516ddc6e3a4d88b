"""Where a batch runs and in what pieces: the model's device, the inputs moved there,
predictions in chunks, how many inputs go through one pass (a default without probing, or
the service's measured sizes), and the batch boundaries where a cancelled job stops."""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Callable

import torch
from torch import nn

from .precision import forward_fn


def device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def prepare(model: nn.Module, images: torch.Tensor, labels=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images (N,C,H,W) as float on the model's device; labels as a long tensor there."""
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got {tuple(images.shape)}")
    dev = device_of(model)
    x = images.detach().to(dev, torch.float32)
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1).to(dev)
        if len(labels) != len(x):
            raise ValueError(f"{len(labels)} labels for {len(x)} images")
    return x, labels


def probabilities(model: nn.Module, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """softmax(model(x)) in float32, in chunks, without a graph: the one predict helper
    (through the worker's prepared fp32 forward when there is one)."""
    fwd = forward_fn(model)
    with torch.no_grad():
        return torch.cat([fwd(c).softmax(1) for c in x.split(chunk)])


def predicted(model: nn.Module, x: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """The predicted classes (N,)."""
    return probabilities(model, x, chunk).argmax(1)


def auto_batch_size(model: nn.Module, example: torch.Tensor, grad: bool, cap: int = 4096) -> int:
    """A batch size for inputs shaped like `example` (C,H,W) without running the model:
    CPU: about 8 MB of inputs per forward (4 MB with a backward), 8..256 (bigger batches
    are no faster on a CPU); CUDA: a quarter of the free memory over a guess of 512 floats
    of activations per input value (x3 with a backward). The service measures instead
    (`sizing`, `worker.explain.calibrate`)."""
    per = example.numel() * 4
    if example.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(example.device)
        n = free // 4 // (per * 512 * (3 if grad else 1))
    else:
        n = (4 << 20 if grad else 8 << 20) // per
        n = 1 << max(3, min(8, int(n).bit_length() - 1))   # a power of two in 8..256
    return int(max(1, min(n, cap)))


Sizer = Callable[[nn.Module, torch.Tensor, str, torch.dtype, bool], int]
_sizer: ContextVar[Sizer | None] = ContextVar("xaiq_sizer", default=None)


@contextlib.contextmanager
def sizing(sizer: Sizer):
    """Inside, `batch_size` asks `sizer(model, example, method, dtype, grad)` (the service's
    measured sizes) instead of the default."""
    token = _sizer.set(sizer)
    try:
        yield
    finally:
        _sizer.reset(token)


def batch_size(model: nn.Module, example: torch.Tensor, method: str, dtype: torch.dtype = torch.float32,
               grad: bool = False, cap: int = 4096) -> int:
    """How many inputs shaped like `example` (C,H,W) `method` runs in one pass: measured
    inside `sizing`, else `auto_batch_size`; never more than `cap`."""
    sizer = _sizer.get()
    n = sizer(model, example, method, dtype, grad) if sizer is not None else auto_batch_size(model, example, grad)
    return max(1, min(int(n), cap))


_checkpoint: ContextVar[Callable[[], None] | None] = ContextVar("xaiq_checkpoint", default=None)


@contextlib.contextmanager
def checkpoints(check: Callable[[], None]):
    """Inside, every `checkpoint()` (between batches of any method) calls `check`, which
    may raise to stop the work (the service stops a cancelled job's unit this way)."""
    token = _checkpoint.set(check)
    try:
        yield
    finally:
        _checkpoint.reset(token)


def checkpoint() -> None:
    """A batch boundary: methods call it between batches; it does nothing outside `checkpoints`."""
    check = _checkpoint.get()
    if check is not None:
        check()

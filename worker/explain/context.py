"""How a batch runs, passed to every method explicitly (no hidden state): how many inputs go
through one pass (`sizes`, the service's measured batch sizes), what may stop the work between
batches (`check`: a cancelled job, a spent budget), the model's prepared forward copies
(`prepared`: batch norm folded, NHWC, per dtype) and the threads that do side work beside the
device (`pool`: LIME's segmentation and surrogate fits). `RunContext()` is the plain default:
estimated batch sizes, nothing stops, the model as it is, no extra threads kept."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import nn

Forward = Callable[[torch.Tensor], torch.Tensor]   # (B, C, H, W) float32 -> (B, K) float32, no graph
Sizer = Callable[[nn.Module, torch.Tensor, str, torch.dtype, bool], int]


class Prepared(Protocol):
    """Forward-only copies of one model (`worker.models.prepare.Prepared`)."""

    model: nn.Module

    def __call__(self, dtype: torch.dtype) -> Forward: ...


def plain(model: nn.Module, dtype: torch.dtype) -> Forward:
    """The model as it is: NHWC inputs for convolutions, autocast for a reduced dtype."""
    def fwd(x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:   # oneDNN and tensor-core convolutions are faster on NHWC
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            if dtype == torch.float32:
                return model(x).float()
            with torch.autocast(x.device.type, dtype=dtype):
                return model(x).float()
    return fwd


def auto_batch_size(model: nn.Module, example: torch.Tensor, grad: bool, cap: int = 4096) -> int:
    """A batch size for inputs shaped like `example` (C,H,W) without running the model:
    CPU: about 8 MB of inputs per forward (4 MB with a backward), 8..256 (bigger batches
    are no faster on a CPU); CUDA: a quarter of the free memory over a guess of 512 floats
    of activations per input value (x3 with a backward). The service measures instead
    (`worker.explain.calibrate`)."""
    per = example.numel() * 4
    if example.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(example.device)
        n = free // 4 // (per * 512 * (3 if grad else 1))
    else:
        n = (4 << 20 if grad else 8 << 20) // per
        n = 1 << max(3, min(8, int(n).bit_length() - 1))   # a power of two in 8..256
    return int(max(1, min(n, cap)))


@dataclass(frozen=True)
class RunContext:
    sizes: Sizer | None = None
    check: Callable[[], None] | None = None
    prepared: Prepared | None = None
    pool: ThreadPoolExecutor | None = None

    def batch_size(self, model: nn.Module, example: torch.Tensor, method: str,
                   dtype: torch.dtype = torch.float32, grad: bool = False, cap: int = 4096) -> int:
        """How many inputs shaped like `example` (C,H,W) `method` runs in one pass: measured
        (`sizes`), else `auto_batch_size`; never more than `cap`."""
        n = self.sizes(model, example, method, dtype, grad) if self.sizes is not None \
            else auto_batch_size(model, example, grad)
        return max(1, min(int(n), cap))

    def checkpoint(self) -> None:
        """A batch boundary: methods call it between batches; `check` may raise to stop."""
        if self.check is not None:
            self.check()

    def forward(self, model: nn.Module, dtype: torch.dtype = torch.float32) -> Forward:
        """The forward to score with at `dtype`: the prepared copy if it is this model's
        (a randomised copy of the model, in the sanity check, runs as it is)."""
        if self.prepared is not None and self.prepared.model is model:
            return self.prepared(dtype)
        return plain(model, dtype)


DEFAULT = RunContext()

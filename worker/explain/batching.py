"""Where a batch runs and in what pieces: the model's device, the inputs moved there,
predictions in chunks, and how many inputs go through one forward pass."""
from __future__ import annotations

import contextlib
import time
import weakref
from contextvars import ContextVar
from typing import Callable

import torch
from torch import nn

from .hooks import Stop, evaluating


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
    """softmax(model(x)) in float32, in chunks, without a graph: the one predict helper."""
    with torch.no_grad():
        return torch.cat([model(c).float().softmax(1) for c in x.split(chunk)])


def predicted(model: nn.Module, x: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """The predicted classes (N,)."""
    return probabilities(model, x, chunk).argmax(1)


_BATCH_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def auto_batch_size(model: nn.Module, example: torch.Tensor, grad: bool, cap: int = 4096) -> int:
    """How many inputs shaped like `example` (C,H,W) to run in one forward.

    Estimate per-input memory from one probe forward (sum of leaf outputs; x2 for
    a backward). CUDA: half of the free memory. CPU: a 256 MB (no grad) / 1 GB
    (grad) working set; bigger batches are not faster in fp32 on CPU. A model that takes
    no hooks (TorchScript) gets a conservative guess instead: 512 floats of activations
    per input value (a ResNet-50 keeps ~170, a ViT-B/16 ~360).
    """
    key = (tuple(example.shape), example.device.type, grad)
    cache = _BATCH_CACHE.setdefault(model, {})
    if key in cache:
        return min(cache[key], cap)
    total, handles = [example.numel() * 4], []
    try:
        for m in model.modules():
            if not list(m.children()):
                handles.append(m.register_forward_hook(
                    lambda _m, _i, o: total.append(o.numel() * o.element_size()) if torch.is_tensor(o) else None))
    except RuntimeError:   # "register_forward_hook is not supported on ScriptModules": no probe
        for h in handles:
            h.remove()
        handles = None
        total.append(example.numel() * 4 * 512)
    try:
        if handles is not None:
            with torch.no_grad(), evaluating(model):
                model(example[None])
    except Stop:   # probing inside a `capture(stop=True)`: memory up to that layer
        pass
    finally:
        for h in handles or ():
            h.remove()
    per = (sum(total) * 2 if grad else 2 * max(total) + example.numel() * 8)
    if example.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(example.device)
        budget = free // 2
    else:
        budget = (1024 if grad else 256) << 20
    cache[key] = max(1, int(budget // max(per, 1)))
    return min(cache[key], cap)


def run_chunked(model: nn.Module, example: torch.Tensor, n: int, cap: int, tune: bool, fn) -> None:
    """Call fn(start, stop) over range(n) in chunks of at most `cap`.

    tune (CPU with an automatic size, where the fastest batch is small and depends on the
    cache): first one chunk of each power of two up to min(cap, 64), timed (useful work, not
    a probe), then the fastest per item for the rest. The choice is remembered per model and
    input shape, so later calls chunk identically and give the same numbers.
    """
    cache = _BATCH_CACHE.setdefault(model, {})
    key = ("tuned", tuple(example.shape), cap)
    trials = sorted({c for c in (1, 2, 4, 8, 16, 32, 64) if c <= cap} | ({cap} if cap <= 64 else set())) if tune else []
    if sum(trials) > n // 2:
        trials = []
    i, times = 0, {}
    for c in trials:
        t = time.perf_counter()
        checkpoint()
        fn(i, i + c)
        times[c] = (time.perf_counter() - t) / c
        i += c
    if trials and key not in cache:
        cache[key] = min(times, key=times.get)
    bs = cache.get(key, cap) if trials else cap
    while i < n:
        checkpoint()
        fn(i, min(n, i + bs))
        i += bs


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

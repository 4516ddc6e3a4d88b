"""What every explanation method shares: the result type, hooks, normalisation.

Each method module `worker/explain/<name>.py` has
  * a public function in the user's words (e.g. `saliency(model, images, labels=None)`),
  * `explain(model, images, labels, params) -> Explanation`, the adapter the worker
    calls with the registry's parameter model (`shared.methods`).
No I/O here: tensors in, arrays out.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Explanation:
    """A method's output for a batch of N images.

    maps:      (N, ...) float32, the raw result per image (stored as `{method}.npy`).
    pictures:  (N, H, W, 3) float32 in [0, 1], what a person looks at (`{method}.png`).
    heatmaps:  (N, H, W) float32 per-pixel importance (higher = more important) for
               attribution methods, used by audits; None for other methods.
    extras:    per-batch artefacts that belong to no single image, name -> array
               (e.g. the filter visualizations, (F, C, H, W)); pictures of them are
               rendered from `extra_pictures`.
    """

    maps: np.ndarray
    pictures: np.ndarray
    heatmaps: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    extra_pictures: dict[str, np.ndarray] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# Shared helpers (pure torch). Every method moves images to the model's device,
# runs in eval mode and never leaves hooks or parameter gradients behind.
# ---------------------------------------------------------------------------
import contextlib  # noqa: E402
import weakref  # noqa: E402
from typing import Iterator  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402


def device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """model.eval() inside, every module's `training` flag restored on exit."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, t in flags:
            m.training = t


class _Stop(Exception):
    """Raised by a capture hook to cut the forward pass after the layer."""


class Capture:
    """Holds the latest output of a hooked module (`.value`)."""

    value: torch.Tensor | None = None


@contextlib.contextmanager
def capture(module: nn.Module, stop: bool = False) -> Iterator[Capture]:
    """Forward hook storing `module`'s output; removed on exit, also on error.

    stop=True ends the forward pass right after `module` (use `run_until`).
    """
    box = Capture()

    def hook(_m, _inp, out):
        box.value = out
        if stop:
            raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


def run_until(model: nn.Module, x: torch.Tensor, box: Capture) -> torch.Tensor:
    """model(x) under a `capture(..., stop=True)`: the hooked output."""
    try:
        model(x)
    except _Stop:
        pass
    if box.value is None:
        raise RuntimeError("the hooked layer was not reached in the forward pass")
    return box.value


def layer_of(model: nn.Module, layer: str | None) -> nn.Module:
    """A module by path ('cnn.15'); None: the last nn.Conv2d."""
    if layer is not None:
        return model.get_submodule(layer)
    convs = [m for m in model.modules()
             if isinstance(m, nn.Conv2d) or getattr(m, "original_name", None) == "Conv2d"]
    if not convs:
        raise ValueError("the model has no nn.Conv2d; name a layer")
    return convs[-1]


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


@torch.no_grad()
def predicted(model: nn.Module, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    return torch.cat([model(c).argmax(1) for c in x.split(batch)])


def normalize(t: torch.Tensor) -> torch.Tensor:
    """Each item of the batch min-max scaled to [0, 1] on its own (the seed's
    `normalize`); a constant item becomes zeros instead of NaN."""
    flat = t.reshape(len(t), -1)
    lo = flat.min(1, keepdim=True).values
    span = flat.max(1, keepdim=True).values - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp_min(torch.finfo(t.dtype).tiny), torch.zeros_like(flat))
    return out.reshape(t.shape)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def rgb(x: torch.Tensor) -> torch.Tensor:
    """(N,C,H,W) -> (N,H,W,3): C=3 as is, C=1 grey replicated, other C: channel mean as grey."""
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != 3:
        x = x.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1)


def overlay(images: torch.Tensor, heat: torch.Tensor, alpha: float = 0.5) -> np.ndarray:
    """Pictures (N,H,W,3) in [0,1]: the 'jet' colour map of the per-image normalised
    heat (N,H,W) blended over the grey, normalised image."""
    from matplotlib import colormaps

    grey = normalize(images.mean(1)).cpu().numpy()[..., None]
    h = to_numpy(normalize(heat))
    col = colormaps["jet"](h)[..., :3]
    return np.clip((1 - alpha) * grey + alpha * col, 0, 1).astype(np.float32)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N,h,w) -> (N,H,W) bilinear, align_corners=False (Captum's interpolate)."""
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


_BATCH_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def auto_batch_size(model: nn.Module, example: torch.Tensor, grad: bool, cap: int = 4096) -> int:
    """How many inputs shaped like `example` (C,H,W) to run in one forward.

    Estimate per-input memory from one probe forward (sum of leaf outputs; x2 for
    a backward). CUDA: half of the free memory. CPU: a 64 MB (no grad) / 256 MB
    (grad) working set; bigger batches are not faster in fp32 on CPU.
    """
    key = (tuple(example.shape), example.device.type, grad)
    cache = _BATCH_CACHE.setdefault(model, {})
    if key in cache:
        return min(cache[key], cap)
    total = [example.numel() * 4]
    handles = [m.register_forward_hook(lambda _m, _i, o: total.append(o.numel() * o.element_size())
                                       if torch.is_tensor(o) else None)
               for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad(), evaluating(model):
            model(example[None])
    except _Stop:   # probing inside a `capture(stop=True)`: memory up to that layer
        pass
    finally:
        for h in handles:
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
    import time

    cache = _BATCH_CACHE.setdefault(model, {})
    key = ("tuned", tuple(example.shape), cap)
    trials = sorted({c for c in (1, 2, 4, 8, 16, 32, 64) if c <= cap} | ({cap} if cap <= 64 else set())) if tune else []
    if sum(trials) > n // 2:
        trials = []
    i, times = 0, {}
    for c in trials:
        t = time.perf_counter()
        fn(i, i + c)
        times[c] = (time.perf_counter() - t) / c
        i += c
    if trials and key not in cache:
        cache[key] = min(times, key=times.get)
    bs = cache.get(key, cap) if trials else cap
    while i < n:
        fn(i, min(n, i + bs))
        i += bs

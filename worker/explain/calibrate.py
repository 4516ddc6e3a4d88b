"""Batch sizes measured, not guessed: for each model, input shape, device, method and
precision the fastest batch is measured once (every candidate size timed `repeats` times
after a warm-up, the median kept) and filed in a store that every worker shares (Redis in
the service, see `worker.context`); later units only look it up. Outside the service
`batching.auto_batch_size` gives a default without running the model.
"""
from __future__ import annotations

import logging
import statistics
import time
from typing import Callable, Protocol

import torch
from torch import nn

from .context import DEFAULT, RunContext
from .precision import NAMES

log = logging.getLogger("xaiq.worker")


class Store(Protocol):
    def get(self, key: str) -> str | int | None: ...
    def set(self, key: str, value: int) -> None: ...


class MemoryStore(dict):
    """A `Store` in this process only (notebooks, benchmarks, tests)."""

    def set(self, key: str, value: int) -> None:
        self[key] = value


def device_name(device: torch.device) -> str:
    """What a measurement holds for: the GPU's model, or the CPU's vector unit and threads."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"{device.type}:{torch.backends.cpu.get_cpu_capability()}:{torch.get_num_threads()}t"


def candidates(device: torch.device, example: torch.Tensor) -> list[int]:
    """Powers of two from 4: up to 4096 on a GPU; on a CPU up to 256 and 1 GB of inputs."""
    top = 4096 if device.type == "cuda" else min(256, max(4, (1 << 30) // (example.numel() * 4)))
    return [1 << k for k in range(2, 13) if 1 << k <= top] or [1]


def runner(model: nn.Module, dtype: torch.dtype, grad: bool,
           run: RunContext = DEFAULT) -> Callable[[torch.Tensor], object]:
    """What one batch costs: a forward-only pass (the run's prepared forward), or a forward and
    the gradient with respect to the inputs."""
    if not grad:
        return run.forward(model, dtype)

    def run(x: torch.Tensor):
        x = x.clone().requires_grad_(True)
        with torch.enable_grad(), torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
            y = model(x)
        return torch.autograd.grad(y.float().logsumexp(1).sum(), x)
    return run


def _timed(run, x: torch.Tensor) -> float:
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    t = time.perf_counter()
    run(x)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return time.perf_counter() - t


def measure(run, example: torch.Tensor, sizes: list[int], repeats: int = 3,
            budget_s: float = 8.0) -> tuple[int, dict[int, float]]:
    """(the smallest size within 5% of the best throughput, images/s by size). Sizes are tried
    in order; it stops when two sizes in a row gain under 5% on the best before them, when
    the time spent passes `budget_s`, or when device memory runs out."""
    rates: dict[int, float] = {}
    spent = 0.0
    for b in sizes:
        x = example.detach()[None].expand(b, *example.shape).contiguous()
        try:
            times = [_timed(run, x) for _ in range(repeats + 1)][1:]   # the first warms up
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            break
        rates[b] = b / statistics.median(times)
        spent += sum(times) * (repeats + 1) / repeats
        values = list(rates.values())
        if spent > budget_s or (len(values) >= 3 and max(values[-2:]) < 1.05 * max(values[:-2])):
            break
    if not rates:
        return sizes[0], rates
    best = max(rates.values())
    return min(b for b, r in rates.items() if r >= 0.95 * best), rates


class MeasuredSizes:
    """A `batching.Sizer` for one model: its filed batch size, else one measured now and filed."""

    def __init__(self, store: Store, model_key: str, repeats: int = 3, budget_s: float = 8.0,
                 run: RunContext = DEFAULT):
        self.store, self.model_key, self.repeats, self.budget_s = store, model_key, repeats, budget_s
        self.run = run   # whose prepared forwards the forward-only sizes are measured with

    def key(self, example: torch.Tensor, method: str, dtype: torch.dtype, grad: bool) -> str:
        """Forward-only methods (LIME, audit curves) run the same pass: they share one measurement."""
        shape = "x".join(str(d) for d in example.shape)
        return (f"{self.model_key}|{shape}|{device_name(example.device)}|{method if grad else 'forward'}|"
                f"{NAMES.get(dtype, str(dtype))}")

    def __call__(self, model: nn.Module, example: torch.Tensor, method: str, dtype: torch.dtype, grad: bool) -> int:
        key = self.key(example, method, dtype, grad)
        hit = self.store.get(key)
        if hit is not None:
            return int(hit)
        size, rates = measure(runner(model, dtype, grad, self.run), example, candidates(example.device, example),
                              self.repeats, self.budget_s)
        log.info("batch size %d for %s (images/s by size: %s)", size, key,
                 {b: round(r, 1) for b, r in rates.items()})
        self.store.set(key, size)
        return size

"""Batch sizes measured, not guessed: the choice among measured rates, measured once per
model, input shape, device, method and precision and then only looked up (also by another
worker, through Redis); outside the service a default that never runs the model. The
timings here are made up (no test asserts a real duration)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from worker.explain import calibrate as C
from worker.explain.context import RunContext, auto_batch_size


def fake_clock(monkeypatch, seconds_per_batch):
    """_timed returns seconds_per_batch(len(x)); records the sizes run."""
    runs = []

    def timed(_run, x):
        runs.append(len(x))
        return seconds_per_batch(len(x))
    monkeypatch.setattr(C, "_timed", timed)
    return runs


def test_the_smallest_size_within_five_percent_of_the_best(monkeypatch):
    per_image = {4: 1.0, 8: 0.6, 16: 0.5, 32: 0.49, 64: 0.495, 128: 0.6}
    runs = fake_clock(monkeypatch, lambda b: b * per_image[b])
    size, rates = C.measure(None, torch.zeros(3, 8, 8), [4, 8, 16, 32, 64, 128], repeats=3, budget_s=1e9)
    assert size == 16                      # 2.0 images/s, within 5% of 32's 2.04
    assert list(rates) == [4, 8, 16, 32, 64]   # stopped: 32 and 64 gained under 5% on the best before them
    assert runs.count(16) == 4             # a warm-up and three timed repeats


def test_the_budget_and_memory_end_a_measurement(monkeypatch):
    fake_clock(monkeypatch, lambda b: b * 1.0)
    size, rates = C.measure(None, torch.zeros(3, 8, 8), [4, 8, 16], repeats=3, budget_s=20)
    assert list(rates) == [4, 8] and size == 4   # 4 x 4 s, then 4 x 8 s: over 20 s

    def oom(_run, x):
        if len(x) > 8:
            raise torch.OutOfMemoryError("out of memory")
        return 1.0
    monkeypatch.setattr(C, "_timed", oom)
    size, rates = C.measure(None, torch.zeros(3, 8, 8), [4, 8, 16, 32], repeats=2, budget_s=1e9)
    assert list(rates) == [4, 8] and size == 8


def test_measured_once_then_looked_up_by_every_forward_method(monkeypatch):
    runs = fake_clock(monkeypatch, lambda b: 1.0 + 0.01 * b)
    store = C.MemoryStore()
    sizer = C.MeasuredSizes(store, "model-a")
    model, example = nn.Conv2d(3, 4, 3), torch.zeros(3, 16, 16)
    first = sizer(model, example, "lime", torch.float32, False)
    measured = len(runs)
    assert sizer(model, example, "faithfulness", torch.float32, False) == first   # the same forward pass
    assert len(runs) == measured
    sizer(model, example, "lime", torch.bfloat16, False)                          # another precision
    sizer(model, example, "smoothgrad", torch.float32, True)                      # a gradient method
    assert len(store) == 3 and len(runs) > measured
    again = C.MeasuredSizes(store, "model-a")                                      # another worker, same store
    n = len(runs)
    assert again(model, example, "lime", torch.float32, False) == first and len(runs) == n
    assert all(k.startswith("model-a|3x16x16|cpu:") for k in store)


def test_batch_size_asks_the_runs_sizer_and_else_the_default():
    model, example = nn.Conv2d(3, 4, 3), torch.zeros(3, 16, 16)
    asked = []

    def sizer(m, ex, method, dtype, grad):
        asked.append((method, dtype, grad))
        return 48
    run = RunContext(sizes=sizer)
    assert run.batch_size(model, example, "lime", cap=1000) == 48
    assert run.batch_size(model, example, "lime", cap=10) == 10
    assert asked == [("lime", torch.float32, False)] * 2
    assert RunContext().batch_size(model, example, "lime") == auto_batch_size(model, example, grad=False)


class Refuses(nn.Module):
    def forward(self, x):
        raise AssertionError("the default must not run the model")


@pytest.mark.parametrize("shape, grad, want", [((3, 128, 128), False, 32), ((3, 128, 128), True, 16),
                                                ((1, 32, 32), False, 256), ((3, 1024, 1024), False, 8)])
def test_the_default_never_runs_the_model(shape, grad, want):
    assert auto_batch_size(Refuses(), torch.zeros(shape), grad=grad) == want


def test_redis_shares_measured_sizes_between_workers(redis_url):
    import uuid

    import redis

    from shared.redis_keys import RedisKeys
    from worker.context import RedisSizes

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    key = RedisKeys(f"test{uuid.uuid4().hex[:8]}").batch_sizes     # keys of its own
    a, b = RedisSizes(r, key), RedisSizes(r, key)
    assert b.of("m") == {}
    a.file({"m|3x8x8|cpu|forward|fp32": 64, "other|3x8x8|cpu|forward|fp32": 8})
    assert b.of("m") == {"m|3x8x8|cpu|forward|fp32": 64}      # another worker reads the model's own
    r.delete(key)
    assert b.of("m") == {"m|3x8x8|cpu|forward|fp32": 64}      # kept in the process once read


@pytest.mark.parametrize("method, params", [
    ("filters", {"layer": "cnn.4", "filters": [0, 1, 2], "iterations": 2}),
    ("gradcam", {}), ("lime", {"num_samples": 20, "n_segments": 8}),
    ("smoothgrad", {"samples": 3}), ("integrated_gradients", {"steps": 3}), ("saliency", {}),
])
def test_every_method_runs_with_measured_sizes(method, params):
    """A measurement runs whole forwards: never inside a method's hooks (filters stop the
    forward at their layer; measuring there once failed every filters unit)."""
    import worker.explain as E
    from worker.models.architectures import DigitsCNN

    torch.manual_seed(0)
    model, x = DigitsCNN().eval(), torch.randn(2, 1, 32, 32)
    store = C.MemoryStore()
    run = RunContext(sizes=C.MeasuredSizes(store, "digits", repeats=1, budget_s=0.2))
    r = E.run(method, model, x, torch.tensor([1, 2]), params, run)
    assert r.maps.shape[0] == 2 and np.isfinite(r.maps).all()
    batched = True   # every method runs its images in chunks of the measured size
    assert len(store) == batched and all(int(v) >= 1 for v in store.values())

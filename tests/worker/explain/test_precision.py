"""Precision as a choice with a guard: what 'auto' means on a device, reduced-precision
LIME agreeing with fp32 as closely as two fp32 seeds agree with each other (the food-11
CNN and the digits model), the fall-back to fp32 under 'auto' when a model disagrees, and
an explicit precision honoured with the guard's verdict recorded."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import worker.explain as E
from worker.explain import precision as P
from worker.models.architectures import Food11CNN


def test_auto_is_reduced_only_where_the_device_runs_it_fast(monkeypatch):
    monkeypatch.setattr(P, "cpu_features", lambda: {"avx2": True, "avx512_bf16": False, "amx_bf16": False})
    assert P.resolve("auto", "cpu") == torch.float32           # this machine's kind: AVX2 only
    monkeypatch.setattr(P, "cpu_features", lambda: {"avx512_bf16": True})
    assert P.resolve("auto", "cpu") == torch.bfloat16
    monkeypatch.setattr(P, "cpu_features", lambda: {"amx_bf16": True})
    assert P.resolve("auto", "cpu") == torch.bfloat16
    assert P.resolve("fp16", "cpu") == torch.float16 and P.resolve("fp32", "cpu") == torch.float32
    with pytest.raises(ValueError, match="precision"):
        P.resolve("int8", "cpu")


def weights(e, label: int) -> np.ndarray:
    w = np.zeros(int(e.segments.max()) + 1)
    for s, v in e.local_exp[label]:
        w[s] = v
    return w


def agreement(a, b, labels) -> tuple[float, float]:
    """(mean top-5 overlap, mean correlation) of the superpixel weights of two runs."""
    top = lambda w: set(np.argsort(-np.abs(w))[:5])  # noqa: E731
    pairs = [(weights(x, t), weights(y, t)) for x, y, t in zip(a, b, labels)]
    return (float(np.mean([len(top(u) & top(v)) for u, v in pairs])),
            float(np.mean([np.corrcoef(u, v)[0, 1] for u, v in pairs])))


def small_food11() -> nn.Module:
    """The food-11 CNN on 32x32 inputs through an adaptive pool (the same network at a test's
    cost), with He-initialised weights and non-trivial batch-norm statistics: its logits move
    by units across LIME's perturbations, as a trained network's do. (PyTorch's default
    init leaves outputs that move by 1e-4, below bf16's resolution: the guard then keeps
    fp32, `test_the_guard_keeps_fp32_where_the_outputs_barely_move`.)"""
    m = default_food11()
    for mod in m.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
            nn.init.zeros_(mod.bias)
    return m.eval()


def default_food11() -> nn.Module:
    torch.manual_seed(0)
    m = Food11CNN()
    for bn in [mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)]:
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
    m.cnn.append(nn.AdaptiveAvgPool2d(4))
    return m.eval()


def check_agreement(model, x, labels, reduced: str, samples: int, n_segments: int) -> None:
    run = lambda seed, p: E.lime_many(model, x, [[t] for t in labels], num_samples=samples,  # noqa: E731
                                      n_segments=n_segments, seed=seed, precision=p)
    base, other, low = run(0, "fp32"), run(1, "fp32"), run(0, reduced)
    assert all(r.precision == reduced for r in low)       # the guard kept the reduced dtype
    seeds, ours = agreement(base, other, labels), agreement(base, low, labels)
    assert ours[0] >= seeds[0] and ours[1] >= seeds[1], (ours, seeds)


@pytest.mark.slow
@pytest.mark.parametrize("reduced", ["bf16", "fp16"])
def test_reduced_lime_agrees_with_fp32_on_the_digits_model(digits, reduced):
    model, x, y = digits
    check_agreement(model, x[:3], [int(t) for t in y[:3]], reduced, samples=200, n_segments=40)


def photos(size: int) -> torch.Tensor:
    """Two of skimage's sample photos (2, 3, size, size) in [0, 1]."""
    from skimage import data
    from skimage.transform import resize

    return torch.tensor(np.stack([resize(img, (size, size), anti_aliasing=True).astype(np.float32)
                                  for img in (data.astronaut(), data.coffee())])).permute(0, 3, 1, 2)


@pytest.mark.slow
def test_reduced_lime_agrees_with_fp32_on_the_food11_cnn():
    model = small_food11()
    x = photos(32)
    with torch.no_grad():
        y = model(x).argmax(1).tolist()
    check_agreement(model, x, y, "bf16", samples=80, n_segments=30)


def auto_is_bf16(monkeypatch) -> None:
    """'auto' as on a CPU with AVX512-BF16 or AMX (this test's machine may have neither)."""
    monkeypatch.setattr(P, "cpu_features", lambda: {"avx512_bf16": True})


@pytest.mark.slow
def test_the_guard_keeps_fp32_under_auto_where_the_outputs_barely_move(monkeypatch):
    auto_is_bf16(monkeypatch)
    model, x = default_food11(), photos(32)[:1]
    r = E.lime(model, x[0], num_samples=40, n_segments=30, seed=0, precision="auto", labels=[1])
    assert r.precision == "fp32"
    assert r.guard.startswith("auto: fp32; bf16 disagrees with fp32 on 16 probe inputs"), r.guard


class Drifts(nn.Module):
    """A model whose reduced-precision outputs are far off (as an overflowing layer would be)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3 * 8 * 8, 4)

    def forward(self, x):
        out = self.lin(x.flatten(1)).float()
        return out + 100.0 * float(torch.is_autocast_enabled(x.device.type))


def test_a_reduced_dtype_that_disagrees_falls_back_to_fp32_under_auto(monkeypatch):
    auto_is_bf16(monkeypatch)
    model = Drifts().eval()
    x = torch.rand(2, 3, 8, 8)
    c = P.choose_scored(model, "auto", x)
    assert c.dtype == torch.float32 and c.verdict.ran == "fp32" and c.verdict.tried == "bf16"
    assert c.verdict.agrees is False and c.verdict.error > 1
    torch.testing.assert_close(c.forward(x), model(x))
    torch.testing.assert_close(c.scored, model(x))              # the probe's fp32 scores are kept
    r = E.lime(model, x[0], num_samples=30, n_segments=8, seed=0, precision="auto", labels=[0])
    assert r.precision == "fp32" and r.guard.startswith("auto: fp32; bf16 disagrees with fp32")
    assert P.agrees(model(x), model(x) + 1e-4) and not P.agrees(model(x), model(x) + 100)


def test_an_explicit_precision_is_honoured_and_the_verdict_recorded(monkeypatch):
    """bf16 asked for runs in bf16 even where the guard finds it far from fp32 (the issue: the
    guard overrode it); the verdict says so, in the result and the method's Explanation."""
    model = Drifts().eval()
    x = torch.rand(2, 3, 8, 8)
    c = P.choose_scored(model, "bf16", x)
    assert c.dtype == torch.bfloat16 and c.verdict.asked == "bf16" and c.verdict.ran == "bf16"
    assert c.verdict.agrees is False
    torch.testing.assert_close(c.forward(x), model(x) + 100, atol=0.5, rtol=0.05)   # the bf16 forward
    r = E.lime(model, x[0], num_samples=30, n_segments=8, seed=0, precision="bf16", labels=[0])
    assert r.precision == "bf16"
    assert r.guard.startswith("bf16: bf16 as asked; bf16 disagrees with fp32 on 16 probe inputs")
    assert r.guard.endswith("'auto' would run fp32")
    from shared.methods import LimeParams, OcclusionParams

    e = E.run("lime", model, x, torch.tensor([0, 1]), LimeParams(num_samples=30, n_segments=8, precision="bf16"))
    assert e.precision == "bf16" and "disagrees" in e.guard
    o = E.run("occlusion", model, x, torch.tensor([0, 1]), OcclusionParams(window=4, stride=4, precision="bf16"))
    assert o.precision == "bf16" and "disagrees" in o.guard
    f = E.run("lime", model, x, torch.tensor([0, 1]), LimeParams(num_samples=30, n_segments=8, precision="fp32"))
    assert f.precision == "fp32" and f.guard == "fp32: fp32 (as asked; no check)"


def test_auto_keeps_an_agreeing_reduced_dtype_and_says_why(monkeypatch):
    auto_is_bf16(monkeypatch)
    model = small_food11()
    x = photos(32)
    c = P.choose_scored(model, "auto", x)
    assert c.dtype == torch.bfloat16 and c.verdict.agrees and str(c.verdict).startswith("auto: bf16; bf16 agrees")
    monkeypatch.setattr(P, "cpu_features", lambda: {"avx2": True})
    c = P.choose_scored(model, "auto", x)
    assert c.dtype == torch.float32 and c.scored is None
    assert str(c.verdict) == "auto: fp32 (this device runs no reduced precision fast; no check)"


@pytest.mark.slow
@pytest.mark.parametrize("samples", [10, 16, 50])
def test_the_guards_probe_is_scored_once(digits, samples):
    """The guard compares the first perturbed copies at both precisions; the stream keeps
    those scores instead of running them again: every perturbation is scored once in the chosen
    precision, plus the probe once in fp32. With fewer samples than the probe, the probe is all."""
    from worker.explain.lime import PROBE

    model, x, y = digits
    rows = []
    handle = model.register_forward_hook(lambda _m, inp, _o: rows.append((len(inp[0]), torch.is_autocast_enabled("cpu"))))
    try:
        r = E.lime(model, x[0], num_samples=samples, n_segments=20, seed=0, precision="bf16", labels=[int(y[0])])
    finally:
        handle.remove()
    assert r.precision == "bf16" and len(r.local_exp[int(y[0])]) > 0
    probe = min(PROBE, samples)
    assert sum(n for n, low in rows if not low) == probe               # the probe in fp32, once
    assert sum(n for n, low in rows if low) == samples                 # every perturbation in bf16, once
    again = E.lime(model, x[0], num_samples=samples, n_segments=20, seed=0, precision="bf16", labels=[int(y[0])],
                   batch_size=3)   # other batch boundaries: the same explanation
    np.testing.assert_allclose(weights(r, int(y[0])), weights(again, int(y[0])), atol=0.05)

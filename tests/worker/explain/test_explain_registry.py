"""Every method of the registry: shapes, ranges, determinism, batch independence, no
state left on the model (hooks, gradients, train/eval flags), also after an error."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

import worker.explain as E
from shared.methods import METHODS



def no_hooks(model: nn.Module) -> bool:
    return all(not (mod._forward_hooks or mod._forward_pre_hooks or mod._backward_hooks
                    or mod._backward_pre_hooks) for mod in model.modules())


def small_params(name: str, layer: str) -> dict:
    """The registry's small example parameters of the method, for a model with this conv layer."""
    return METHODS[name].example_params(layer)


def test_every_registered_method_has_a_module_and_examples():
    import importlib

    for name, method in METHODS.items():
        assert callable(importlib.import_module(method.module).explain), name
        method.params.model_validate(small_params(name, "x"))   # the examples are valid parameters
        if "layer" in method.params.model_fields and method.params.model_fields["layer"].is_required():
            assert method.example.get("layer") == "{layer}", name


@pytest.mark.parametrize("name", list(METHODS))
def test_outputs(name, setup):
    _, model, x, y, layer = setup
    n, c, h, w = x.shape
    model.train()                                   # must be restored, and explained in eval mode
    e = E.run(name, model, x, y, small_params(name, layer))
    assert all(m.training for m in model.modules())
    model.eval()
    assert e.maps.dtype == np.float32 and len(e.maps) == n and np.isfinite(e.maps).all()
    assert e.pictures.dtype == np.float32 and e.pictures.shape[0] == n and e.pictures.shape[-1] == 3
    assert e.pictures.min() >= 0 and e.pictures.max() <= 1
    if METHODS[name].attribution:
        assert e.heatmaps.shape == (n, h, w) and np.isfinite(e.heatmaps).all()
        assert e.pictures.shape == (n, h, w, 3)
    if name == "filters":
        assert e.maps.shape[:2] == (n, 3)
        assert e.extras["visualizations"].shape == (3, c, h, w)
        assert e.extra_pictures["visualizations"].shape == (3, h, w, 3)
    if name == "saliency":
        assert e.maps.shape == (n, c, h, w) and e.maps.min() >= 0 and e.maps.max() <= 1
    assert no_hooks(model)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("name", list(METHODS))
def test_deterministic_and_batch_independent(name, setup):
    _, model, x, y, layer = setup
    p = small_params(name, layer)
    a = E.run(name, model, x, y, p)
    b = E.run(name, model, x, y, p)
    np.testing.assert_array_equal(a.maps, b.maps)
    np.testing.assert_array_equal(a.pictures, b.pictures)
    for k in a.extras:
        np.testing.assert_array_equal(a.extras[k], b.extras[k])
    singles = [E.run(name, model, x[i:i + 1], y[i:i + 1], p) for i in range(len(x))]
    np.testing.assert_allclose(np.concatenate([s.maps for s in singles]), a.maps, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.concatenate([s.pictures for s in singles]), a.pictures, rtol=1e-4, atol=1e-5)


class Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


@pytest.mark.parametrize("name", list(METHODS))
def test_state_restored_after_an_error(name, digits):
    model, x, y = digits
    broken = copy.deepcopy(model)
    broken.fc[2] = Boom()                           # fails after the conv layers (and their hooks) ran
    p = small_params(name, "cnn.4")
    if name == "filters":
        p["filters"] = [999]                        # the layer has 32 channels
    broken.train()
    with pytest.raises((RuntimeError, IndexError)):
        E.run(name, broken, x[:2], y[:2], p)
    assert no_hooks(broken)
    assert all(m.training for m in broken.modules())
    assert all(p.grad is None for p in broken.parameters())


def test_public_functions_default_labels_and_devices(digits):
    model, x, y = digits
    pred = model(x).argmax(1)
    np.testing.assert_array_equal(E.saliency(model, x), E.saliency(model, x, pred))
    np.testing.assert_array_equal(E.gradcam(model, x), E.gradcam(model, x, pred))
    assert E.gradcam(model, x, upsampled=False).shape == (len(x), 8, 8)   # last conv: cnn.8
    assert E.smoothgrad(model, x[:2], samples=3).shape == x[:2].shape
    assert E.integrated_gradients(model, x[:2], steps=3, baseline="mean").shape == x[:2].shape
    r = E.lime(model, x[0], num_samples=50, n_segments=16, seed=0, precision="fp32")
    assert len(r.top_labels) == 5 and r.top_labels[0] == int(pred[0])
    with pytest.raises(ValueError):
        E.saliency(model, x[0])                     # (C,H,W): not a batch


@pytest.mark.slow
def test_run_accepts_models_dicts_and_rejects_bad_params(digits):
    from shared.methods import SaliencyParams

    model, x, y = digits
    a = E.run("saliency", model, x[:2], y[:2], SaliencyParams())
    b = E.run("saliency", model, x[:2], y[:2], None)
    np.testing.assert_array_equal(a.maps, b.maps)
    with pytest.raises(ValidationError, match="num_samples"):
        E.run("lime", model, x[:2], y[:2], {"num_samples": 1})
    with pytest.raises(KeyError):
        E.run("nope", model, x[:2], y[:2], {})


def test_constant_map_normalises_to_zeros():
    from worker.explain.pictures import normalize

    t = torch.stack([torch.ones(1, 4, 4), torch.arange(16.0).view(1, 4, 4)])
    out = normalize(t)
    assert torch.equal(out[0], torch.zeros(1, 4, 4)) and out[1].max() == 1 and out[1].min() == 0


@pytest.mark.parametrize("name", list(METHODS))
def test_frozen_parameters_as_the_worker_loads_them(name, digits):
    """The worker sets requires_grad=False on every parameter; each method must still
    work and give the same result as on the unfrozen model."""
    model, x, y = digits
    frozen = copy.deepcopy(model)
    for p in frozen.parameters():
        p.requires_grad_(False)
    params = small_params(name, "cnn.4")
    a = E.run(name, model, x[:3], y[:3], params)
    b = E.run(name, frozen, x[:3], y[:3], params)
    np.testing.assert_allclose(a.maps, b.maps, rtol=1e-5, atol=1e-6)
    assert all(not p.requires_grad for p in frozen.parameters())

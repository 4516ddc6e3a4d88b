"""The compared attribution methods as the worker runs them: in batches the run sizes (a batch
equals its images one by one), stopping at batch boundaries, as many forward passes as the
registry's cost says, and a long-lived model left exactly as it was (no hook, flag or
parameter changed), also when a method fails or is stopped half-way."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import worker.explain as E
from shared.methods import METHODS, occlusion_positions
from worker.explain.context import RunContext

NEW = ["input_x_gradient", "guided_backprop", "gradient_shap", "deeplift", "occlusion", "lrp"]
REWIRING = ["guided_backprop", "deeplift", "lrp"]


class Counted(nn.Module):
    """The model, counting the images of each forward pass."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.batches = model, []

    def forward(self, x):
        self.batches.append(len(x))
        return self.model(x)


class Stop(Exception):
    pass


def state(model: nn.Module) -> dict:
    """Everything a method could leave behind on a model."""
    return {"params": {k: v.clone() for k, v in model.state_dict().items()},
            "training": [m.training for m in model.modules()],
            "requires_grad": [p.requires_grad for p in model.parameters()],
            "grads": [p.grad for p in model.parameters()],
            "hooks": [len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                      + len(m._backward_pre_hooks) for m in model.modules()]}


def assert_unchanged(before: dict, model: nn.Module) -> None:
    after = state(model)
    for k in before["params"]:
        assert torch.equal(before["params"][k], after["params"][k]), k
    assert before["training"] == after["training"] and before["requires_grad"] == after["requires_grad"]
    assert all(g is None for g in after["grads"]) and not any(after["hooks"])


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW)
def test_batches_equal_one_by_one_and_stop_between_them(name, setup):
    """Batches of at most 2 inputs per pass, a checkpoint before each: the same maps as each
    image alone, and at least as many checkpoints as batches."""
    _, model, x, y, layer = setup
    x, y = torch.cat([x, x.flip(-1)])[:5], torch.cat([y, y])[:5]
    p = METHODS[name].example_params(layer)
    calls = []
    run = RunContext(sizes=lambda *a: 2, check=lambda: calls.append(1))
    batched = E.run(name, model, x, y, p, run)
    singles = np.concatenate([E.run(name, model, x[i:i + 1], y[i:i + 1], p).maps for i in range(len(x))])
    np.testing.assert_allclose(batched.maps, singles, rtol=1e-4, atol=1e-5 * max(1e-6, np.abs(singles).max()))
    assert len(calls) >= 3


@pytest.mark.parametrize("name", NEW)
def test_forward_passes_match_the_registry_cost(name, digits):
    """What the cost estimate counts is what runs: gradient methods 3 per input through the
    model (a forward and a backward), occlusion one forward per window position and image
    (plus the image itself), LRP a forward per image and one probe image."""
    model, x, y = digits
    counted = Counted(model)
    p = METHODS[name].params.model_validate(METHODS[name].example_params("cnn.4")).model_dump()
    if name == "occlusion":
        p["precision"] = "fp32"     # no guard's probe
    E.run(name, counted, x, y, p, RunContext(sizes=lambda *a: 64))
    n, manifest = len(x), {"input": {"channels": 1, "height": 32, "width": 32}}
    cost = METHODS[name].cost(p, n, 1, manifest)
    seen = sum(counted.batches)
    if name == "occlusion":
        assert seen == cost == n * (1 + occlusion_positions(p, manifest)) == n * (1 + 16)
        assert max(counted.batches) > 1                   # many occluded copies per forward
    elif name == "lrp":
        assert seen == n + 1 and cost == n * (1 + 3 * 4)  # alpha2beta1: 4 layer evaluations per rule layer
    else:
        assert cost == 3 * seen


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW)
def test_the_model_is_left_as_it_was_also_when_stopped(name, setup):
    _, model, x, y, layer = setup
    p = METHODS[name].example_params(layer)
    with torch.no_grad():
        before_out = model(x)
    model.train()
    before = state(model)
    calls = []

    def stop_at_second():
        calls.append(1)
        if len(calls) == 2:
            raise Stop

    with pytest.raises(Stop):
        E.run(name, model, x, y, p, RunContext(sizes=lambda *a: 1, check=stop_at_second))
    assert_unchanged(before, model)
    E.run(name, model, x, y, p)
    assert_unchanged(before, model)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), before_out)


def _inplace(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = True
    return model


class Shared(nn.Module):
    """One ReLU module called three times (as torchvision's ResNet blocks do)."""

    def __init__(self, separate: bool):
        super().__init__()
        torch.manual_seed(3)
        self.c1, self.c2 = nn.Conv2d(3, 6, 3), nn.Conv2d(6, 6, 3)
        self.pool, self.fc = nn.MaxPool2d(2), nn.Linear(6 * 10 * 10, 5)
        self.relu = nn.ReLU()
        self.relus = nn.ModuleList([nn.ReLU() for _ in range(3)]) if separate else None

    def act(self, i, t):
        return self.relus[i](t) if self.relus is not None else self.relu(t)

    def forward(self, x):
        t = self.pool(self.act(1, self.c2(self.act(0, self.c1(x)))))
        return self.fc(self.act(2, t).flatten(1))


@pytest.mark.parametrize("name", REWIRING)
def test_in_place_and_reused_activations(name, tiny):
    """The re-wired methods give the same maps with in-place ReLUs, and with one ReLU module
    called several times, as with separate, out-of-place ones."""
    model, x, y = tiny
    np.testing.assert_allclose(E.run(name, _inplace(model), x, y).maps, E.run(name, model, x, y).maps,
                               rtol=1e-5, atol=1e-7)
    x2 = torch.rand(3, 3, 24, 24, generator=torch.Generator().manual_seed(4))
    shared, separate = Shared(False).eval(), Shared(True).eval()
    y2 = separate(x2).argmax(1)
    np.testing.assert_allclose(E.run(name, shared, x2, y2).maps, E.run(name, separate, x2, y2).maps,
                               rtol=1e-5, atol=1e-7)

"""Numeric references: the seed's own code (written out as the seed has it, on CPU) and
Captum's implementations."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, NoiseTunnel, Saliency
from torch.optim import Adam

import worker.explain as E


def log_softmax_of(model):
    return lambda inp: F.log_softmax(model(inp), 1)


# --- the seed, verbatim but for .cuda() --------------------------------------------
def normalize(image):
    return (image - image.min()) / (image.max() - image.min())


def compute_saliency_maps(x, y, model):
    model.eval()
    x.requires_grad_()
    y_pred = model(x)
    loss_func = torch.nn.CrossEntropyLoss()
    loss = loss_func(y_pred, y)
    loss.backward()
    saliencies = x.grad.abs().detach().cpu()
    saliencies = torch.stack([normalize(item) for item in saliencies])
    return saliencies


layer_activations = None


def filter_explaination(x, model, cnnid, filterid, iteration=100, lr=1):
    model.eval()

    def hook(model, input, output):
        global layer_activations
        layer_activations = output

    hook_handle = model.cnn[cnnid].register_forward_hook(hook)
    model(x)
    filter_activations = layer_activations[:, filterid, :, :].detach().cpu()
    x = x.clone()   # (the seed's x.cuda() made a copy)
    x.requires_grad_()
    optimizer = Adam([x], lr=lr)
    for _ in range(iteration):
        optimizer.zero_grad()
        model(x)
        objective = -layer_activations[:, filterid, :, :].sum()
        objective.backward()
        optimizer.step()
    filter_visualization = x.detach().cpu().squeeze()[0]
    hook_handle.remove()
    return filter_activations, filter_visualization
# -------------------------------------------------------------------------------------


def test_saliency_equals_the_seed_and_captum(digits):
    model, x, y = digits
    ours = E.saliency(model, x, y)
    seed = compute_saliency_maps(x.clone(), y, copy.deepcopy(model)).numpy()
    np.testing.assert_allclose(ours, seed, atol=1e-5)
    cap = Saliency(log_softmax_of(model)).attribute(x.clone(), target=y, abs=True)
    np.testing.assert_allclose(ours, E.pictures.normalize(cap).numpy(), atol=1e-5)
    model.zero_grad(set_to_none=True)


@pytest.mark.slow
@pytest.mark.parametrize("cnnid", [4, 8])
def test_filters_seed_style_equals_the_seed_loop(digits, cnnid):
    model, x, y = digits
    filters = [0, 3, 7]
    r = E.filter_explanation(model, x[:4], f"cnn.{cnnid}", filters, iterations=15, lr=1.0, style="seed")
    ref = copy.deepcopy(model)
    for i, k in enumerate(filters):
        acts, vis = filter_explaination(x[:4], ref, cnnid, k, iteration=15, lr=1)
        np.testing.assert_allclose(r.activations[:, i], acts.numpy(), rtol=1e-5, atol=1e-5)
        scale = np.abs(vis.numpy()).max()
        np.testing.assert_allclose(r.visualizations[i, 0], vis.numpy(), rtol=1e-5, atol=1e-5 * scale)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.slow
def test_readable_style_is_deterministic_and_per_filter(digits):
    model, x, _ = digits
    a = E.filter_explanation(model, x, "cnn.8", [1, 4], iterations=5, seed=2).visualizations
    b = E.filter_explanation(model, x, "cnn.8", [4], iterations=5, seed=2).visualizations
    c = E.filter_explanation(model, x, "cnn.8", [1, 4], iterations=5, seed=3).visualizations
    np.testing.assert_allclose(a[1], b[0], atol=1e-5)
    assert not np.allclose(a, c)
    assert (a >= x.min().item() - 1e-5).all() and (a <= x.max().item() + 1e-5).all()


@pytest.mark.slow
def test_smoothgrad_equals_captum_noise_tunnel(setup):
    _, model, x, y, _ = setup
    samples, noise, seed = 6, 0.15, 4
    ours = E.smoothgrad(model, x, y, samples=samples, noise=noise, seed=seed)
    nt = NoiseTunnel(Saliency(log_softmax_of(model)))
    for i in range(len(x)):
        xi = x[i:i + 1]
        torch.manual_seed(seed)
        ref = nt.attribute(xi, nt_type="smoothgrad", nt_samples=samples, target=int(y[i]), abs=True,
                           stdevs=float(noise * (xi.max() - xi.min())))
        np.testing.assert_allclose(ours[i:i + 1], ref.detach().numpy(), rtol=1e-4, atol=1e-6)
    other = E.smoothgrad(model, x, y, samples=samples, noise=noise, seed=seed + 1)
    assert not np.allclose(ours, other, rtol=1e-4, atol=1e-6)   # the comparison can fail


@pytest.mark.slow
@pytest.mark.parametrize("baseline", ["zeros", "mean"])
def test_integrated_gradients_equal_captum(setup, baseline):
    _, model, x, y, _ = setup
    steps = 16
    ours = E.integrated_gradients(model, x, y, steps=steps, baseline=baseline)
    b = torch.zeros_like(x) if baseline == "zeros" else x.mean(dim=(2, 3), keepdim=True).expand_as(x).contiguous()
    ref = IntegratedGradients(log_softmax_of(model)).attribute(x, baselines=b, target=y, n_steps=steps,
                                                                 method="gausslegendre")
    np.testing.assert_allclose(ours, ref.detach().numpy(), rtol=1e-3, atol=1e-4)


def test_gradcam_equals_captum(setup):
    _, model, x, y, layer = setup
    module = model.get_submodule(layer)
    cam = LayerGradCam(model, module).attribute(x, target=y, relu_attributions=True)
    up = LayerAttribution.interpolate(cam, x.shape[-2:], interpolate_mode="bilinear")
    np.testing.assert_allclose(E.gradcam(model, x, y, layer=layer, upsampled=False), cam[:, 0].detach().numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(E.gradcam(model, x, y, layer=layer), up[:, 0].detach().numpy(), rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_gradcam_default_layer_is_the_last_conv(digits):
    model, x, y = digits
    np.testing.assert_array_equal(E.gradcam(model, x, y), E.gradcam(model, x, y, layer="cnn.8"))

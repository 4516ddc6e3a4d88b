"""The compared attribution methods against independent references: Captum 0.9 (input x
gradient, guided backprop, GradientSHAP, DeepLIFT, occlusion) and zennit 0.5 (LRP), on small
networks built here with seeded random weights (the methods were never tuned on them) and on
the trained digits CNN with real digits; several images each, the same target as the module
says (log softmax, the centred logit for DeepLIFT, the logit for LRP).

Tolerances: float32 throughout; |ours - reference| <= RTOL * |reference| + ATOL * max|reference|
with RTOL = 1e-4, ATOL = 1e-5 (the two compute the same sums in other orders or batches)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import DeepLift, GradientShap, GuidedBackprop, InputXGradient, Occlusion
from torch import nn

import worker.explain as E
from tests.references import zennit
from worker.explain.gradient_shap import distribution
from worker.explain.integrated_gradients import baseline_of

RTOL, ATOL = 1e-4, 1e-5


def close(ours, ref):
    ref = np.asarray(ref)
    assert np.abs(ref).max() > 0, "a reference of zeros compares nothing"
    np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=ATOL * np.abs(ref).max())


class Stem(nn.Module):
    """3x28x28 -> 7: conv/BN/ReLU/max-pool twice, a hidden linear layer, a linear head."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 5, padding=2), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(6, 10, 3), nn.BatchNorm2d(10), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(10 * 6 * 6, 32), nn.ReLU(), nn.Linear(32, 7))

    def forward(self, x):
        return self.classifier(self.features(x))


class Pooled(nn.Module):
    """1x20x20 -> 4: max-pool before batch norm, a batch norm after a ReLU, an average pool, no head bias."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.MaxPool2d(2), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 12, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(12),
                                  nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(48, 4, bias=False)

    def forward(self, x):
        return self.head(self.body(x))


def _seeded(model: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = model()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):    # eval statistics and affine parameters far from the identity
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.4, 1.6)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture(scope="module", params=["stem", "pooled", "digits"])
def net(request, digits):
    """(name, model, images, targets): 5 images; targets not always the predicted class."""
    g = torch.Generator().manual_seed(7)
    if request.param == "stem":
        model, x = _seeded(Stem, 11), torch.rand(5, 3, 28, 28, generator=g) * 2 - 1
    elif request.param == "pooled":
        model, x = _seeded(Pooled, 12), torch.randn(5, 1, 20, 20, generator=g)
    else:
        model, x, _ = digits
        x = x[:5]
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    y[1] = logits[1].argsort()[-2]            # one image explained for its runner-up class
    return request.param, model, x, y


def log_softmax_of(model):
    return lambda inp: F.log_softmax(model(inp), 1)


def test_input_x_gradient_equals_captum(net):
    _, model, x, y = net
    ref = InputXGradient(log_softmax_of(model)).attribute(x.clone(), target=y).detach().numpy()
    close(E.input_x_gradient(model, x, y), ref)


def test_guided_backprop_equals_captum(net):
    _, model, x, y = net
    ref = GuidedBackprop(nn.Sequential(model, nn.LogSoftmax(1))).attribute(x.clone(), target=y).detach().numpy()
    ours = E.guided_backprop(model, x, y)
    close(ours, ref)
    assert not np.allclose(ours, InputXGradient(log_softmax_of(model)).attribute(x.clone(), target=y)
                           .detach().numpy() / np.where(x.numpy() == 0, 1, x.numpy()), atol=1e-6)   # not plain gradients


@pytest.mark.slow
@pytest.mark.parametrize("baseline, noise", [("noise", 0.0), ("noise", 0.1), ("zeros", 0.05), ("mean", 0.0)])
def test_gradient_shap_equals_captum(net, baseline, noise):
    _, model, x, y = net
    samples, count, seed = 7, 5, 3
    ours = E.gradient_shap(model, x, y, samples=samples, baseline=baseline, baselines=count, noise=noise, seed=seed)
    g = torch.Generator().manual_seed(seed)
    torch.randn((samples, *x.shape[1:]), generator=g)            # the input noise's draws come first
    z = torch.randn((count, *x.shape[1:]), generator=g)          # then the 'noise' distribution's
    for i in range(len(x)):
        xi = x[i:i + 1]
        dist = distribution(xi, baseline, z)[0].contiguous()
        np.random.seed(seed)
        torch.manual_seed(seed)
        ref = GradientShap(log_softmax_of(model)).attribute(xi, baselines=dist, n_samples=samples, target=int(y[i]),
                                                            stdevs=float(noise * (xi.max() - xi.min())))
        close(ours[i:i + 1], ref.detach().numpy())
    assert not np.allclose(ours, E.gradient_shap(model, x, y, samples=samples, baseline=baseline, baselines=count,
                                                 noise=noise, seed=seed + 1))   # the comparison can fail


class Centred(nn.Module):
    """The model's logits less their mean: DeepLIFT's target."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        return out - out.mean(1, keepdim=True)


class Copy(nn.Module):
    def forward(self, x):
        return x.clone()


def separated(model: nn.Module) -> nn.Module:
    """The same network with an identity copy between a ReLU and the max pool right after it:
    Captum 0.9 reads a stale gradient where two hooked modules touch (captum#1104)."""
    model = copy.deepcopy(model)
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        kids = list(seq.children())
        for i in reversed(range(len(kids) - 1)):
            if isinstance(kids[i], nn.ReLU) and isinstance(kids[i + 1], nn.MaxPool2d):
                kids.insert(i + 1, Copy())
        for k in list(seq._modules):
            del seq._modules[k]
        for j, kid in enumerate(kids):
            seq.add_module(str(j), kid)
    return model


@pytest.mark.parametrize("baseline", ["zeros", "mean"])
def test_deeplift_equals_captum_and_sums_to_delta(net, baseline):
    _, model, x, y = net
    ours = E.deeplift(model, x, y, baseline=baseline)
    b = baseline_of(x, baseline).contiguous()
    reference = DeepLift(Centred(separated(model)).eval(), eps=1e-10)
    for i in range(len(x)):
        ref = reference.attribute(x[i:i + 1].clone(), baselines=b[i:i + 1], target=int(y[i]))
        close(ours[i:i + 1], ref.detach().numpy())
    with torch.no_grad():   # summation to delta: the contributions add up to the score's difference
        delta = (Centred(model)(x) - Centred(model)(b)).gather(1, y[:, None])[:, 0].numpy()
    np.testing.assert_allclose(ours.reshape(len(x), -1).sum(1), delta, rtol=1e-4, atol=1e-5 * np.abs(delta).max())


@pytest.mark.parametrize("window, stride, baseline", [(6, 3, "zeros"), (7, 5, "mean"), (4, 4, "zeros")])
def test_occlusion_equals_captum(net, window, stride, baseline):
    _, model, x, y = net
    ours = E.occlusion(model, x, y, window=window, stride=stride, baseline=baseline, precision="fp32")
    b = baseline_of(x, baseline).contiguous()
    c = x.shape[1]
    ref = Occlusion(log_softmax_of(model)).attribute(x, sliding_window_shapes=(c, window, window), baselines=b,
                                                     strides=(c, stride, stride), target=y, perturbations_per_eval=7)
    close(ours, ref.detach().numpy())


def _composite(rule: str, first_layer: str, epsilon: float):
    """The zennit composite with these rules: its named ones where it has them, else rule by rule."""
    z = zennit()
    from zennit.composites import (EpsilonAlpha2Beta1, EpsilonAlpha2Beta1Flat, EpsilonPlus, EpsilonPlusFlat,
                                   LayerMapComposite, SpecialFirstLayerMapComposite, layer_map_base)
    from zennit.rules import Epsilon, Flat
    from zennit.types import Convolution, Linear

    canon = [z.canonizers.SequentialMergeBatchNorm()]
    named = {("zplus", "flat"): EpsilonPlusFlat, ("zplus", "rule"): EpsilonPlus,
             ("alpha2beta1", "flat"): EpsilonAlpha2Beta1Flat, ("alpha2beta1", "rule"): EpsilonAlpha2Beta1}
    if rule != "epsilon":
        return named[rule, first_layer](epsilon=epsilon, canonizers=canon)
    layers = layer_map_base() + [(Convolution, Epsilon(epsilon)), (nn.Linear, Epsilon(epsilon))]
    if first_layer == "flat":
        return SpecialFirstLayerMapComposite(layers, [(Linear, Flat())], canonizers=canon)
    return LayerMapComposite(layers, canonizers=canon)


@pytest.mark.parametrize("rule, first_layer, epsilon", [
    ("zplus", "flat", 1e-6), ("zplus", "rule", 1e-6), ("alpha2beta1", "rule", 1e-6), ("alpha2beta1", "flat", 1e-6),
    ("epsilon", "rule", 1e-6), ("epsilon", "flat", 0.25), ("epsilon", "rule", 0.25)])
def test_lrp_equals_zennit(net, rule, first_layer, epsilon):
    _, model, x, y = net
    zennit()
    from zennit.attribution import Gradient

    model = copy.deepcopy(model)   # zennit's canonizer leaves a merged batch norm as x / sqrt(1 + eps), not x:
    for m in model.modules():      # with eps = 0 both compute the same network (LRP-0 magnifies any difference)
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 0.0
    ours = E.lrp(model, x, y, rule=rule, first_layer=first_layer, epsilon=epsilon)
    theirs = copy.deepcopy(model)   # the canonizer rewrites the parameters it merges (and restores them)
    with Gradient(theirs, _composite(rule, first_layer, epsilon)) as attributor:
        _, ref = attributor(x.clone(), lambda out: out * F.one_hot(y, out.shape[1]))
    close(ours, ref.detach().numpy())


def test_lrp_conserves_the_logit_without_biases():
    """Without biases, batch norm or a stabiliser that matters, LRP-epsilon and z+ lose no relevance:
    each map sums to the target's logit (independent of any implementation)."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(2, 5, 3, bias=False), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(5, 6, 3, bias=False),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(54, 3, bias=False)).eval()
    x = 4 * torch.rand(4, 2, 16, 16, generator=torch.Generator().manual_seed(2)) + 0.5   # positive: no zero inputs
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    for rule in ("epsilon", "zplus"):
        r = E.lrp(model, x, y, rule=rule, first_layer="rule")
        np.testing.assert_allclose(r.reshape(4, -1).sum(1), logits.gather(1, y[:, None])[:, 0].numpy(), rtol=1e-4)
    assert np.abs(logits.gather(1, y[:, None]).numpy()).min() > 1e-2   # logits far from the stabiliser

"""LRP's rules over a model's torch.nn modules, as zennit's composites and canonizer apply them
(zennit 0.5: zennit/rules.py, zennit/composites.py, zennit/canonizers.py; `worker.explain.lrp`
says which rule goes where). A rule is a forward hook whose output keeps the layer's values
and carries the rule as its backward (the gradient x input form: the gradient arriving at a
layer's output is its relevance, the one leaving at its input is the input's relevance)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .hooks import forward_hooks

STABILIZER = 1e-6
LINEAR = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
PASS = (nn.ELU, nn.Hardshrink, nn.Hardsigmoid, nn.Hardtanh, nn.Hardswish, nn.LeakyReLU, nn.LogSigmoid, nn.PReLU,
        nn.ReLU, nn.ReLU6, nn.RReLU, nn.SELU, nn.CELU, nn.GELU, nn.Sigmoid, nn.SiLU, nn.Softplus, nn.Softshrink,
        nn.Softsign, nn.Tanh, nn.Tanhshrink, nn.Threshold)   # zennit's activations (its Pass rule)
AVGPOOL = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def layer_fn(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """The conv or linear layer as a function of its input, with these parameters (no hooks)."""
    if isinstance(module, nn.Linear):
        return lambda t: F.linear(t, weight, bias)
    return lambda t: module._conv_forward(t, weight, bias)


def terms(rule: str, layer: nn.Module, a: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, eps: float):
    """[(coefficient, stabiliser, [(modified input, modified layer)])] as zennit's rules: each
    group's outputs share one denominator; relevance = sum of coefficient * input * gradient."""
    pos, neg = w.clamp(min=0), w.clamp(max=0)
    bp, bn = (b.clamp(min=0), b.clamp(max=0)) if b is not None else (None, None)
    ap, an = a.clamp(min=0), a.clamp(max=0)
    if rule == "epsilon":
        return [(1.0, eps, [(a, layer_fn(layer, w, b))])]
    plus = [(ap, layer_fn(layer, pos, bp)), (an, layer_fn(layer, neg))]
    if rule == "zplus":
        return [(1.0, STABILIZER, plus)]
    if rule == "alpha2beta1":
        return [(2.0, STABILIZER, plus), (-1.0, STABILIZER, [(ap, layer_fn(layer, neg, bn)), (an, layer_fn(layer, pos))])]
    if rule == "flat":
        return [(1.0, STABILIZER, [(torch.ones_like(a), layer_fn(layer, torch.ones_like(w)))])]
    raise ValueError(f"unknown rule {rule!r}")


def relevance_output(z: torch.Tensor, a: torch.Tensor, groups) -> torch.Tensor:
    """z's values, with the rule as its backward: given the relevance R arriving at z, the
    gradient at `a` is sum of coefficient * input_k * d(sum_k layer_k(input_k) . R / stab)/d input_k."""
    gate = 1.0 + (a - a.detach())          # 1, with the identity as its gradient
    out = z.detach()
    for coef, eps, group in groups:
        total = sum(fn(inp.detach() * gate) for inp, fn in group)
        z_ = total.detach()
        scaled = total / (z_ + ((z_ == 0).to(z_) + z_.sign()) * eps)   # zennit's stabiliser: away from 0
        out = out + coef * (scaled - scaled.detach())
    return out


def passed(inp: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out's values; relevance passes back unchanged (zennit's Pass)."""
    return out.detach() + (inp - inp.detach())


def merged(layer: nn.Module, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of the layer with the eval-mode batch norm after it folded in (zennit's arithmetic)."""
    scale = (bn.weight if bn.weight is not None else 1.0) / (bn.running_var + bn.eps) ** 0.5
    w = layer.weight * scale.view(-1, *[1] * (layer.weight.dim() - 1))
    b = ((layer.bias if layer.bias is not None else 0.0) - bn.running_mean) * scale
    return w, (b + bn.bias if bn.bias is not None else b)


def probe(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module | None, dict[nn.Module, nn.Module]]:
    """One forward of x: (the first conv/linear layer run, {batch norm: the layer whose output it takes})."""
    order, pairs, last = [], {}, {}

    def seen(m, _i, out):
        order.append(m)
        last["out"], last["m"] = out, m

    def takes(m, inputs):
        if inputs[0] is last.get("out") and m.running_var is not None:
            pairs[m] = last["m"]

    with forward_hooks([(m, seen) for m in model.modules() if isinstance(m, LINEAR)],
                       [(m, takes) for m in model.modules() if isinstance(m, BATCHNORM)]), torch.no_grad():
        model(x)
    return (order[0] if order else None), pairs


def rules(model: nn.Module, x: torch.Tensor, rule: str, first_layer: str, epsilon: float):
    """Context: the model's layers propagate relevance (x: an example batch for the probe)."""
    first, pairs = probe(model, x)
    if first is None:   # e.g. TorchScript or an exported program: its layers are no torch.nn modules
        raise ValueError("LRP found no torch.nn convolution or linear layer to apply its rules to")
    folded, inputs = set(pairs.values()), {}

    def rule_of(m):
        return "flat" if m is first and first_layer == "flat" else ("epsilon" if isinstance(m, nn.Linear) else rule)

    def linear(m, inp, out):
        if m in folded:                    # its batch norm applies the rule, with merged parameters
            inputs[m] = inp[0]
            return None
        return relevance_output(out, inp[0], terms(rule_of(m), m, inp[0], m.weight, m.bias, epsilon))

    def norm(m, inp, out):
        if m not in pairs:
            return passed(inp[0], out)
        layer = pairs[m]
        a, (w, b) = inputs.pop(layer), merged(layer, m)
        z = layer_fn(layer, w, b)(a.detach())   # the merged layer's values, as zennit's canonized network has them
        return relevance_output(z, a, terms(rule_of(layer), layer, a, w, b, epsilon))

    def average(m, inp, out):   # zennit's Norm: epsilon with the stabiliser, through the pool itself
        return relevance_output(out, inp[0], [(1.0, STABILIZER, [(inp[0], m.forward)])])

    mods = list(model.modules())
    return forward_hooks([(m, linear) for m in mods if isinstance(m, LINEAR)]
                         + [(m, norm) for m in mods if isinstance(m, BATCHNORM)]
                         + [(m, lambda _m, inp, out: passed(inp[0], out)) for m in mods if isinstance(m, PASS)]
                         + [(m, average) for m in mods if isinstance(m, AVGPOOL)])

"""Layer-wise relevance propagation (LRP): the target's logit redistributed layer by layer down
to the pixels, by a rule per kind of layer.

Paper: Bach et al. 2015, https://doi.org/10.1371/journal.pone.0130140; rules per layer:
Montavon et al. 2019, "Layer-Wise Relevance Propagation: An Overview",
https://doi.org/10.1007/978-3-030-28954-6_10
Target: the target's logit, where LRP and zennit start: the map sums to about that logit, less
what biases absorb. The rules as zennit's composites apply them, with its stabilisers:
convolutions take `rule` (epsilon, zplus, alpha2beta1), nn.Linear layers epsilon, the first
conv/linear layer the image reaches flat if `first_layer` is 'flat' (zplus + flat is zennit's
EpsilonPlusFlat); average pools zennit's Norm; activations and batch norms pass relevance on
(Pass), but a batch norm right after a conv/linear layer is merged into it first (zennit's
canonizer); max pools and the rest pass gradients. Rules are forward hooks whose outputs keep
the layer's values and carry the rule as their backward; removed on exit, also on error.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .batching import predicted, prepare
from .context import DEFAULT, RunContext
from .hooks import evaluating
from .lrp_rules import rules
from .pictures import overlay, to_numpy
from .result import Explanation


def lrp_tensor(model: nn.Module, images: torch.Tensor, labels=None, rule: str = "zplus", first_layer: str = "flat",
               epsilon: float = 1e-6, batch_size: int | None = None, run: RunContext = DEFAULT):
    """(relevance (N,C,H,W) on the model's device, labels used)."""
    x, y = prepare(model, images, labels)
    out = torch.zeros_like(x)
    with evaluating(model):
        if y is None:
            y = predicted(model, x, run=run)
        per = batch_size or run.batch_size(model, x[0], "lrp", grad=True)
        with rules(model, x[:1], rule, first_layer, epsilon), torch.enable_grad():
            for i in range(0, len(x), per):
                run.checkpoint()
                s = slice(i, min(i + per, len(x)))
                inp = x[s].clone().requires_grad_(True)
                logits = model(inp).float()
                seed = torch.zeros_like(logits).scatter_(1, y[s, None], logits.detach().gather(1, y[s, None]))
                (out[s],) = torch.autograd.grad(logits, inp, grad_outputs=seed)
    return out, y


def lrp(model: nn.Module, images: torch.Tensor, labels=None, rule: str = "zplus", first_layer: str = "flat",
        epsilon: float = 1e-6, batch_size: int | None = None) -> np.ndarray:
    """(N,C,H,W) float32 relevance; labels default to the predicted classes."""
    return to_numpy(lrp_tensor(model, images, labels, rule, first_layer, epsilon, batch_size)[0])


def explain(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, params,
            run: RunContext = DEFAULT) -> Explanation:
    """maps: (N,C,H,W) relevance; heatmaps: (N,H,W) channel sum (signed);
    pictures: jet overlay of the positive part of the heatmap."""
    r, _ = lrp_tensor(model, images, labels, params.rule, params.first_layer, params.epsilon, run=run)
    heat = r.sum(1)
    return Explanation(maps=to_numpy(r), pictures=overlay(images, heat.clamp_min(0)), heatmaps=to_numpy(heat))

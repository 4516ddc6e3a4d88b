"""Model-parameter randomisation test, MPRT (Adebayo et al., "Sanity Checks for Saliency
Maps", NeurIPS 2018, https://arxiv.org/abs/1810.03292), cascading version.

On a copy of the model, the parametrised layers are re-initialised one at a time
from the top (output) layer down, cumulatively; after each stage the maps are
recomputed with `attribute(model, images, labels) -> (N, H, W)` and compared with the
original maps by Spearman rank correlation of their absolute values (per image, then
mean and std). A method that explains the model must change when the model is destroyed:
its correlation drops towards 0. Labels stay fixed (the originally explained classes).

Each stage's per-image correlations are those of `quantus.MPRT` (0.6; its
`ModelParameterRandomisation`) with `layer_order="top_down"` and `seed=seed - 1` (Quantus
seeds torch with `seed + 1` before each layer's `reset_parameters()`, this module with
`seed`), on a model whose layers the two choose alike. Where they differ:
  * layers: Quantus re-initialises every module that has `reset_parameters`; this test
    only those with their own parameters, and skips normalisation layers by default
    (their re-init is the identity, not a randomisation): `skip_norm=False` takes them too;
  * a constant map scores 0 here (no rank order left), NaN in Quantus;
  * `abs=False` ranks the signed maps (Quantus's `abs=False`); the default ranks |map|,
    as Quantus does by default;
  * Quantus re-explains the original model once more ("original" stage); here that
    stage is 1.0 by definition, and a method that draws random numbers from torch (none of
    xaiq's: they take their own seeds) would see other draws.
"""
from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import metrics

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
Attribute = Callable[[nn.Module, torch.Tensor, torch.Tensor], "np.ndarray | torch.Tensor"]


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each pair of rows of (N, ...) arrays (0 for a constant map)."""
    return np.nan_to_num(metrics.spearman_rows(a, b), nan=0.0)


def randomisable_layers(model: nn.Module, skip_norm: bool = True) -> list[str]:
    """Names of modules with their own parameters and `reset_parameters`, input to output."""
    return [name for name, mod in model.named_modules()
            if name and any(True for _ in mod.parameters(recurse=False)) and hasattr(mod, "reset_parameters")
            and not (skip_norm and isinstance(mod, _NORMS))]


def cascading_randomisation(model: nn.Module, images, labels, attribute: Attribute, *,
                            method: str = "", seed: int = 0, skip_norm: bool = True,
                            max_stages: int | None = None, pass_threshold: float = 0.5, abs: bool = True) -> dict:
    """Spearman correlation of the maps (|maps| if `abs`) after each cumulative randomisation
    stage; torch is seeded with `seed` before each layer's re-initialisation.

    Returns {"method", "n_images", "stages": [{"layer", "spearman_mean", "spearman_std"}],
    "final_spearman", "pass_threshold", "passed"}; the first stage is "original" (1.0),
    each next stage names the layer randomised last (top layer first).
    `passed` = the final mean correlation < pass_threshold; "metric": "MPRT", "absolute": `abs`."""
    def maps_of(m: nn.Module) -> np.ndarray:
        a = np.asarray(torch.as_tensor(attribute(m, x, y)).detach().float().cpu(), np.float64)
        return np.abs(a) if abs else a

    x = torch.as_tensor(images)
    y = torch.as_tensor(labels)
    was_training = model.training
    model.eval()
    original = maps_of(model)
    model.train(was_training)
    rand = copy.deepcopy(model).eval()
    layers = randomisable_layers(rand, skip_norm)[::-1][:max_stages]
    modules = dict(rand.named_modules())
    stages = [{"layer": "original", "spearman_mean": 1.0, "spearman_std": 0.0}]
    cuda = sorted({p.device.index or 0 for p in rand.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        for name in layers:
            torch.manual_seed(seed)
            modules[name].reset_parameters()
            r = spearman_rows(original, maps_of(rand))
            stages.append({"layer": name, "spearman_mean": float(r.mean()), "spearman_std": float(r.std())})
    final = stages[-1]["spearman_mean"]
    return {"method": method, "metric": "MPRT", "absolute": bool(abs), "n_images": int(len(x)), "stages": stages,
            "final_spearman": final, "pass_threshold": pass_threshold, "passed": bool(final < pass_threshold)}

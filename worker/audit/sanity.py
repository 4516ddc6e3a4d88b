"""Model-parameter randomisation test (Adebayo et al., "Sanity Checks for Saliency
Maps", NeurIPS 2018, https://arxiv.org/abs/1810.03292), cascading version.

On a copy of the model, the parametrised layers are re-initialised one at a time
from the top (output) layer down, cumulatively; after each stage the maps are
recomputed with `attribute(model, images, labels) -> (N, H, W)` and compared with the
original maps by Spearman rank correlation (per image, then mean and std). A method
that explains the model must change when the model is destroyed: its correlation
drops towards 0. Normalisation layers are skipped by default (their re-init is the
identity, not a randomisation). Labels stay fixed (the originally explained classes).
"""
from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
Attribute = Callable[[nn.Module, torch.Tensor, torch.Tensor], "np.ndarray | torch.Tensor"]


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each pair of rows of (N, ...) arrays (0 for a constant map)."""
    ra = rankdata(np.asarray(a, np.float64).reshape(len(a), -1), axis=1)
    rb = rankdata(np.asarray(b, np.float64).reshape(len(b), -1), axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    return np.where(den > 0, (ra * rb).sum(1) / np.where(den > 0, den, 1), 0.0)


def randomisable_layers(model: nn.Module, skip_norm: bool = True) -> list[str]:
    """Names of modules with their own parameters and `reset_parameters`, input to output."""
    return [name for name, mod in model.named_modules()
            if name and any(True for _ in mod.parameters(recurse=False)) and hasattr(mod, "reset_parameters")
            and not (skip_norm and isinstance(mod, _NORMS))]


def cascading_randomisation(model: nn.Module, images, labels, attribute: Attribute, *,
                            method: str = "", seed: int = 0, skip_norm: bool = True,
                            max_stages: int | None = None, pass_threshold: float = 0.5) -> dict:
    """Spearman correlation of the maps after each cumulative randomisation stage.

    Returns {"method", "n_images", "stages": [{"layer", "spearman_mean", "spearman_std"}],
    "final_spearman", "pass_threshold", "passed"}; the first stage is "original" (1.0),
    each next stage names the layer randomised last (top layer first).
    `passed` = the final mean correlation < pass_threshold."""
    x = torch.as_tensor(images)
    y = torch.as_tensor(labels)
    was_training = model.training
    model.eval()
    original = np.asarray(torch.as_tensor(attribute(model, x, y)).detach().cpu(), np.float64)
    model.train(was_training)
    rand = copy.deepcopy(model).eval()
    layers = randomisable_layers(rand, skip_norm)[::-1][:max_stages]
    modules = dict(rand.named_modules())
    stages = [{"layer": "original", "spearman_mean": 1.0, "spearman_std": 0.0}]
    cuda = sorted({p.device.index or 0 for p in rand.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        for name in layers:
            modules[name].reset_parameters()
            maps = np.asarray(torch.as_tensor(attribute(rand, x, y)).detach().cpu(), np.float64)
            r = spearman_rows(original, maps)
            stages.append({"layer": name, "spearman_mean": float(r.mean()), "spearman_std": float(r.std())})
    final = stages[-1]["spearman_mean"]
    return {"method": method, "n_images": int(len(x)), "stages": stages, "final_spearman": final,
            "pass_threshold": pass_threshold, "passed": bool(final < pass_threshold)}

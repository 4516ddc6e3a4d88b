"""Filter explanation: a layer's activations for the images, and for each filter one
input that maximises it (activation maximisation by gradient ascent).

Paper: Erhan et al. 2009, "Visualizing Higher-Layer Features of a Deep Network";
'readable' style after Olah et al. 2017, "Feature Visualization", https://distill.pub/2017/feature-visualization/
All filters are optimised together in one batch (one start image per filter); Adam is
per-element and eval-mode images are independent, so this equals one run per filter.
On a ViT-style token layer (N, T, D), filter k is channel k of the patch-token grid
(class token dropped, tokens folded to (N, D, h, w) as in Grad-CAM): its activations are
that grid's channel k and the visualisation maximises its sum over the patches.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .batching import prepare
from .context import DEFAULT, RunContext
from .hooks import as_map, capture, evaluating, run_until
from .pictures import normalize, rgb, to_numpy
from .result import Explanation


@dataclass
class FilterExplanation:
    activations: np.ndarray     # (N, F, h, w) layer output[:, k] for the images
    visualizations: np.ndarray  # (F, C, H, W) raw inputs maximising each filter


def _spectral(shape, filters, seed, device):
    """Low-amplitude noise spectra (one generator per filter index: a filter's picture
    does not depend on the others) and the 1/f scale of a frequency parametrisation."""
    c, h, w = shape
    spec = torch.stack([torch.randn((c, h, w // 2 + 1, 2), generator=torch.Generator().manual_seed(seed * 7919 + k))
                        for k in filters]).mul_(0.01).to(device)
    f = (torch.fft.fftfreq(h)[:, None] ** 2 + torch.fft.rfftfreq(w)[None] ** 2).sqrt()
    scale = 1.0 / f.clamp_min(1.0 / max(h, w))
    return spec, (scale / scale.max() * (h * w) ** 0.5 / 4).to(device)  # DC term ~ +-1 per unit coefficient


def _optimise(model, box, x0, filters, iterations, lr, style, seed, run: RunContext):
    n_f, (c, h, w) = len(filters), x0.shape[1:]
    k = torch.as_tensor(filters, device=x0.device)
    rows = torch.arange(n_f, device=x0.device)
    if style == "seed":
        param = x0[:1].repeat(n_f, 1, 1, 1).requires_grad_(True)
        image = lambda: param  # noqa: E731
        opt = torch.optim.Adam([param], lr=lr)
    elif style == "readable":
        param, scale = _spectral((c, h, w), filters, seed, x0.device)
        param.requires_grad_(True)
        lo = x0.amin(dim=(0, 2, 3)).view(1, c, 1, 1)
        hi = x0.amax(dim=(0, 2, 3)).view(1, c, 1, 1)
        hi = torch.where(hi > lo, hi, lo + 1)

        def image():
            pix = torch.fft.irfft2(torch.view_as_complex(param) * scale, s=(h, w), norm="ortho")
            return lo + (hi - lo) * torch.sigmoid(pix)
        opt = torch.optim.Adam([param], lr=0.05 * lr)
        jitter = torch.Generator().manual_seed(seed)
        j = max(1, min(h, w) // 16)
    else:
        raise ValueError(f"unknown style {style!r}")
    for step in range(iterations):
        if step % 10 == 0:
            run.checkpoint()
        x = image()
        if style == "readable":   # random translation each step: robust, less high-frequency noise
            dy, dx = torch.randint(-j, j + 1, (2,), generator=jitter).tolist()
            x = torch.roll(x, (dy, dx), dims=(2, 3))
        if x.device.type == "cpu":   # oneDNN convolutions are faster on NHWC
            x = x.contiguous(memory_format=torch.channels_last)
        act = as_map(run_until(model, x, box), h, w)
        objective = act[rows, k].sum()
        (g,) = torch.autograd.grad(-objective, param)
        param.grad = g
        opt.step()
        box.value = None
    with torch.no_grad():
        return image().detach()


def filter_explanation(model: nn.Module, images: torch.Tensor, layer: str, filters, iterations: int = 100,
                       lr: float = 1.0, style: str = "readable", seed: int = 0,
                       batch_size: int | None = None, run: RunContext = DEFAULT) -> FilterExplanation:
    """Activations (N,F,h,w) of `filters` of `layer` (module path, e.g. 'cnn.15') for the
    images, and one visualization (F,C,H,W) per filter. On a token layer (N,T,D) filter k
    is channel k of the patch-token grid (N,D,h,w).

    style='seed': start from images[0], Adam(lr) on the pixels maximising
    layer_output[:, k].sum(), no regulariser (the classic recipe, filter by filter).
    style='readable': start from low-amplitude noise in a 1/f frequency parametrisation,
    bounded to the images' per-channel value range by a sigmoid, a random translation
    each step, Adam(0.05 * lr) on the spectrum; deterministic given `seed`.
    """
    filters = [int(f) for f in (filters if isinstance(filters, (list, tuple)) else [filters])]
    x, _ = prepare(model, images)
    module = model.get_submodule(layer)
    with evaluating(model):   # sized before the hook: a measurement runs whole forwards
        bs = batch_size or run.batch_size(model, x[0], "filters", grad=True, cap=len(filters))
    with evaluating(model), capture(module, stop=True) as box:
        with torch.no_grad():
            acts = as_map(run_until(model, x, box), *x.shape[-2:])[:, filters].detach()
            box.value = None
        vis = torch.cat([_optimise(model, box, x, filters[i:i + bs], iterations, lr, style, seed, run)
                         for i in range(0, len(filters), bs)])
    return FilterExplanation(to_numpy(acts), to_numpy(vis))


def tile(maps: torch.Tensor, cell: tuple[int, int]) -> torch.Tensor:
    """(F,h,w) maps, each min-max normalised, nearest-upscaled to `cell`, in a near-square
    grid with 1-pixel white gaps -> (H', W', 3)."""
    n = len(maps)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    m = torch.nn.functional.interpolate(normalize(maps)[:, None], size=cell, mode="nearest")[:, 0]
    ch, cw = cell
    out = torch.ones(rows * (ch + 1) - 1, cols * (cw + 1) - 1)
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * (ch + 1):r * (ch + 1) + ch, c * (cw + 1):c * (cw + 1) + cw] = m[i]
    return out[..., None].expand(-1, -1, 3)


def explain(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, params,
            run: RunContext = DEFAULT) -> Explanation:
    """maps: (N,F,h,w) activations; pictures: per image a tile of its F activation maps;
    extras['visualizations']: (F,C,H,W) raw; extra_pictures['visualizations']: (F,H,W,3)."""
    r = filter_explanation(model, images, params.layer, params.filters, params.iterations, params.lr,
                           params.style, params.seed, run=run)
    acts = torch.from_numpy(r.activations)
    h, w = acts.shape[-2:]
    s = max(1, min(images.shape[-2] // h, images.shape[-1] // w))
    pictures = np.stack([tile(a, (h * s, w * s)).numpy() for a in acts]).astype(np.float32)
    vis = torch.from_numpy(r.visualizations)
    return Explanation(maps=r.activations, pictures=pictures, heatmaps=None,
                       extras={"visualizations": r.visualizations},
                       extra_pictures={"visualizations": to_numpy(rgb(normalize(vis)))})

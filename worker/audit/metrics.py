"""Explanation-quality metrics of an audit, per image and method, with Quantus's definitions
(Hedström et al., JMLR 2023, https://github.com/understandable-machine-intelligence-lab/Quantus):
on the same model, images, maps and random draws each gives Quantus's value (0.6; the
tests compare them).

* faithfulness correlation (Bhatt, Weller & Moura, IJCAI 2020,
  https://arxiv.org/abs/2005.00631) = `quantus.FaithfulnessCorrelation`: over `runs` random
  subsets S of `subset` input features (channel-pixels), the Pearson correlation between the
  map's sum over S and the drop of the target's logit when S is set to the baseline. Higher:
  the map's mass predicts what removing features does.
* sparseness (Chalasani et al., ICML 2020, https://arxiv.org/abs/1810.06583) =
  `quantus.Sparseness`: the Gini index of |map| (1: all mass on one pixel, 0: uniform).
* complexity (Bhatt et al. 2020) = `quantus.Complexity`: the entropy of |map| / sum |map|
  (log(H*W) for a uniform map; lower is simpler).
* max-sensitivity (Yeh et al., NeurIPS 2019, https://arxiv.org/abs/1901.09392) =
  `quantus.MaxSensitivity`: the largest ||map(x + u) - map(x)|| / ||map(x)|| over
  `perturbations` uniform noises u in [-radius, radius]^(C*H*W) (input space). Lower:
  the map is stable. Re-explains every perturbed copy, so it runs on a sample.
* agreement: the Spearman rank correlation of two methods' maps of one image
  (= `scipy.stats.spearmanr`, ties averaged; NaN where a map is constant).

Where they differ from Quantus: the maps are normalised per image (Quantus divides by the
largest |value| of the whole batch, which moves sparseness's 1e-7 offset; with
`normalise_func_kwargs={"normalise_axes": (1, 2, 3)}` Quantus does the same), so no image's
map is scaled by another's; an all-zero map gives NaN for complexity (Quantus too) and
max-sensitivity (Quantus: inf); the correlation's baselines are "black" (each image's
minimum, Quantus's default), "white" (maximum), "mean" or "zeros" (0 in input space;
Quantus's `perturb_baseline=0.0`), not Quantus's random "uniform".
Random draws: max-sensitivity's noise replays Quantus's from a legacy
`np.random.RandomState(seed)` (the noise Quantus draws after `np.random.seed(seed)` for the
same images in the same order); the correlation's subsets come from numpy's PCG64 Generator
(`subset_draws`), as Quantus's way (a shuffle of all features per subset) costs ~3 ms a
subset on 3x224x224 images; the tests hand Quantus the same subsets. An audit unit's seed
comes from the audit's seed and its first image, so a unit redone gives the same values.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np
import torch

Forward = Callable[[torch.Tensor], torch.Tensor]          # (B, C, H, W) -> (B, K) logits
Explain = Callable[[torch.Tensor, torch.Tensor], np.ndarray]   # (images, targets) -> (B, H, W) maps

QUALITY_KEYS = ("faithfulness_correlation", "sparseness", "complexity", "max_sensitivity")
BASELINES = ("black", "white", "mean", "zeros")


@dataclass(frozen=True)
class QualityParams:
    """An audit's metric options (`shared.schemas.AuditOptions`)."""
    correlation_runs: int = 32            # 0: no faithfulness correlation
    correlation_subset: int = 224         # features per subset (capped at C*H*W - 1)
    correlation_baseline: str = "black"
    sensitivity_perturbations: int = 10
    sensitivity_radius: float = 0.2

    @classmethod
    def from_options(cls, opts: dict) -> QualityParams:
        """From an audit's options (same names; an audit stored without them gets the defaults)."""
        return cls(**{f.name: opts.get(f.name, f.default) for f in fields(cls)})


# --- correlations -------------------------------------------------------------------
def pearson_rows(a, b) -> np.ndarray:
    """Pearson correlation of each pair of rows of (N, F) arrays, float64; NaN for a constant row."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(1) / den, np.nan)


def spearman_rows(a, b) -> np.ndarray:
    """Spearman rank correlation of each pair of rows (ties get their average rank, as in
    `scipy.stats.spearmanr`); NaN for a constant row."""
    from scipy.stats import rankdata

    ra = rankdata(np.asarray(a, np.float64).reshape(len(a), -1), axis=1)
    rb = rankdata(np.asarray(b, np.float64).reshape(len(b), -1), axis=1)
    return pearson_rows(ra, rb)


def agreement(heatmaps: dict[str, np.ndarray]) -> dict[tuple[str, str], np.ndarray]:
    """Spearman correlation per image of every pair of methods (in the dict's order)."""
    return {(a, b): spearman_rows(heatmaps[a], heatmaps[b]) for a, b in itertools.combinations(heatmaps, 2)}


# --- maps only ----------------------------------------------------------------------
def _abs_by_max(heatmaps) -> np.ndarray:
    """|map| / max |map| per image, (N, H*W) float64 (an all-zero map stays zero)."""
    a = np.abs(np.asarray(heatmaps, np.float64).reshape(len(heatmaps), -1))
    top = a.max(1, keepdims=True)
    return np.divide(a, top, out=np.zeros_like(a), where=top > 0)


def sparseness(heatmaps) -> np.ndarray:
    """Gini index of each map's |values| (Quantus's 1e-7 offset included), (N,)."""
    a = np.sort(_abs_by_max(heatmaps) + 1e-7, axis=1)
    n = a.shape[1]
    rank = np.arange(1, n + 1)
    return ((2 * rank - n - 1) * a).sum(1) / (n * a.sum(1))


def complexity(heatmaps) -> np.ndarray:
    """Entropy of each map's |values| as a distribution, (N,); NaN for an all-zero map."""
    a = _abs_by_max(heatmaps)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = a / a.sum(1, keepdims=True)
    return -(p * np.log(p + 1e-12)).sum(1)


# --- faithfulness correlation --------------------------------------------------------
def subset_draws(n_images: int, n_features: int, subset: int, runs: int, seed: int) -> np.ndarray:
    """(runs, N, subset) feature indices: per run and image, `subset` distinct features drawn by
    numpy's PCG64 Generator seeded with `seed` (microseconds a draw; Quantus's legacy
    `np.random.choice` shuffles all the features for each, ~3 ms at 3x224x224)."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(n_features, subset, replace=False)
                     for _ in range(runs * n_images)]).reshape(runs, n_images, subset).astype(np.int64)


def baseline_values(flat: torch.Tensor, kind: str) -> torch.Tensor:
    """The value each image's removed features take, (N,): Quantus's names, plus "zeros"."""
    if kind == "black":
        return flat.amin(1)
    if kind == "white":
        return flat.amax(1)
    if kind == "mean":
        return flat.mean(1)
    if kind == "zeros":
        return torch.zeros(len(flat), dtype=flat.dtype, device=flat.device)
    raise ValueError(f"unknown baseline {kind!r}; use one of {', '.join(BASELINES)}")


def faithfulness_correlation(images, heatmaps, logits: Forward, targets, *, subset: int = 224, runs: int = 32,
                             baseline: str = "black", seed: int = 0, batch_size: int = 256,
                             subsets: np.ndarray | None = None) -> np.ndarray:
    """Faithfulness correlation of each image, (N,) float64 (NaN where undefined).

    images (N, C, H, W) model input; heatmaps (N, H, W) (each pixel's value counts once per
    channel, as Quantus broadcasts it); logits(x) -> (B, K); targets (N,); subsets: the
    (runs, N, subset) feature indices, default `subset_draws(..., seed)`. All runs of all
    images go through `logits` in chunks of `batch_size`."""
    x = torch.as_tensor(images, dtype=torch.float32)
    n = len(x)
    flat = x.reshape(n, -1)
    n_features, hw = flat.shape[1], int(np.prod(x.shape[2:]))
    if not 1 <= subset < n_features:
        raise ValueError(f"subset must be in 1..{n_features - 1} (the image has {n_features} features), not {subset}")
    idx = subset_draws(n, n_features, subset, runs, seed) if subsets is None else np.asarray(subsets, np.int64)
    runs = len(idx)                                                               # (R, N, S)
    maps = np.asarray(heatmaps, np.float64).reshape(n, hw)
    att = maps[np.arange(n)[None, :, None], idx % hw].sum(-1)                  # (R, N)
    targets = torch.as_tensor(targets, dtype=torch.long, device=x.device).reshape(-1)
    base = baseline_values(flat, baseline)
    with torch.no_grad():
        y0 = torch.cat([logits(c).float() for c in x.split(batch_size)]).gather(1, targets[:, None])[:, 0]
        drops = torch.empty(runs * n, dtype=torch.float32)
        for start in range(0, runs * n, batch_size):
            s = torch.arange(start, min(start + batch_size, runs * n))
            r, i = s // n, s % n
            cols = torch.from_numpy(idx[r.numpy(), i.numpy()]).to(x.device)
            i = i.to(x.device)
            batch = flat[i].scatter(1, cols, base[i, None].expand_as(cols)).view(-1, *x.shape[1:])
            out = logits(batch).float().gather(1, targets[i, None])[:, 0]
            drops[start:start + len(s)] = (y0[i] - out).cpu()
    return pearson_rows(att.T, drops.view(runs, n).numpy().T)


# --- max-sensitivity ------------------------------------------------------------------
def max_sensitivity(explain: Explain, images, targets, heatmaps, *, perturbations: int = 10,
                    radius: float = 0.2, seed: int = 0) -> np.ndarray:
    """Max-sensitivity of each image, (N,) float64 (NaN for an all-zero map).

    explain(x, y) -> (B, H, W) maps of the method being measured; all `perturbations` x N
    noisy copies go through it in one call. The noise is Quantus's: per perturbation a
    (N, C*H*W) uniform draw of RandomState(seed), added in float64, rounded to float32."""
    x = torch.as_tensor(images, dtype=torch.float32)
    n = len(x)
    rs = np.random.RandomState(seed)
    flat = x.detach().cpu().reshape(n, -1).double().numpy()
    noisy = np.stack([(flat + rs.uniform(-radius, radius, size=flat.shape)).astype(np.float32)
                      for _ in range(perturbations)])                            # (P, N, F)
    with torch.inference_mode(False), torch.enable_grad():   # the methods differentiate, whatever the caller's mode
        xs = torch.from_numpy(noisy).view(perturbations * n, *x.shape[1:]).to(x.device)
        ys = torch.from_numpy(np.asarray(torch.as_tensor(targets).cpu(), np.int64).reshape(-1))
        moved = explain(xs, ys.repeat(perturbations).to(x.device))
    moved = np.asarray(moved, np.float64).reshape(perturbations, n, -1)
    a = np.asarray(heatmaps, np.float64).reshape(1, n, -1)
    norm = np.linalg.norm(a, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.linalg.norm(moved - a, axis=-1) / np.where(norm > 0, norm, np.nan)
    return ratio.max(0)


# --- one unit -------------------------------------------------------------------------
def sensitivity_sample(n_images: int, size: int) -> np.ndarray:
    """The dataset indices max-sensitivity runs on: `size` spread evenly over the dataset
    (datasets are stored class by class, so the sample crosses the classes)."""
    if size <= 0 or n_images <= 0:
        return np.zeros(0, np.int64)
    return np.unique(np.round(np.linspace(0, n_images - 1, min(size, n_images))).astype(np.int64))


def unit_quality(images, heatmaps: dict[str, np.ndarray], targets, *, params: QualityParams = QualityParams(),
                 seed: int = 0, logits: Forward | None = None, explainers: dict[str, Explain] | None = None,
                 sensitive=None, batch_size: int = 256) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """Every metric of a unit's images: ({method: {metric: (N,)}}, agreement {(a, b): (N,)}).
    NaN where not computed: faithfulness correlation without `logits` (or with 0 runs),
    max-sensitivity outside `sensitive` (a bool mask (N,)) or without the method's explainer."""
    x = torch.as_tensor(images, dtype=torch.float32)
    n, n_features = len(x), x[0].numel()
    subset = min(params.correlation_subset, n_features - 1)
    mask = np.zeros(n, bool) if sensitive is None else np.asarray(sensitive, bool)
    correlate = logits is not None and params.correlation_runs >= 2 and subset >= 1
    # the same subsets and noise for every method: their values differ by the maps alone
    subsets = subset_draws(n, n_features, subset, params.correlation_runs, seed) if correlate else None
    out = {}
    for m, h in heatmaps.items():
        v = {"sparseness": sparseness(h), "complexity": complexity(h),
             "faithfulness_correlation": np.full(n, np.nan), "max_sensitivity": np.full(n, np.nan)}
        if correlate:
            v["faithfulness_correlation"] = faithfulness_correlation(
                x, h, logits, targets, subset=subset, baseline=params.correlation_baseline, batch_size=batch_size,
                subsets=subsets)
        fn = (explainers or {}).get(m)
        if fn is not None and mask.any() and params.sensitivity_perturbations > 0:
            sel = torch.from_numpy(np.flatnonzero(mask)).to(x.device)
            v["max_sensitivity"][mask] = max_sensitivity(
                fn, x[sel], torch.as_tensor(targets).to(x.device)[sel], np.asarray(h)[mask],
                perturbations=params.sensitivity_perturbations, radius=params.sensitivity_radius, seed=seed)
        out[m] = {k: np.asarray(v[k], np.float64) for k in QUALITY_KEYS}
    return out, agreement(heatmaps)

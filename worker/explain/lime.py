"""LIME on SLIC superpixels: the `lime` 0.2.0.1 algorithm, perturbations batched on the device.

Paper: Ribeiro, Singh, Guestrin 2016, '"Why Should I Trust You?": Explaining the
Predictions of Any Classifier', https://arxiv.org/abs/1602.04938
As LimeImageExplainer().explain_instance(image, softmax∘model, hide_color=None,
segmentation_fn=slic): samples ~ RandomState(seed).randint(0, 2) with row 0 all ones
(the same draws as LimeImageExplainer(random_state=seed)), hidden superpixels filled
with their mean colour, kernel sqrt(exp(-d^2/0.25^2)) of the cosine distance to row 0,
lime's feature selection ('auto') and a weighted Ridge(alpha=1) per label. The
classifier is the model's raw outputs (`outputs="logits"`, what the seed's `predict`
handed to lime, and the scale its `min_weight=0.05` picture was made for) or
softmax(model(x)) (`outputs="probabilities"`, the lime package's convention).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .batching import auto_batch_size, checkpoint, prepare, run_chunked
from .hooks import evaluating
from .pictures import normalize, rgb, to_numpy
from .result import Explanation
from .lime_base import ridge, select_features


def slic_segments(image_hwc: np.ndarray, n_segments=100, compactness=1.0, sigma=1.0) -> np.ndarray:
    """skimage SLIC as the seed calls it, but start_label=0 (lime's feature j is segment j;
    skimage's default start_label=1 would leave the last superpixel never hidden).
    C=1: grey SLIC; an image outside [0, 1] is min-max scaled first (SLIC's colour space)."""
    from skimage.segmentation import slic

    img = np.asarray(image_hwc, np.float64)
    if img.min() < 0 or img.max() > 1:
        img = (img - img.min()) / max(img.max() - img.min(), 1e-12)
    gray = img.shape[-1] == 1
    return slic(img[..., 0] if gray else img, n_segments=n_segments, compactness=compactness, sigma=sigma,
                start_label=0, channel_axis=None if gray else -1)


@dataclass
class LimeExplanation:
    image: np.ndarray                 # (H, W, C) the explained image
    segments: np.ndarray              # (H, W) superpixel ids 0..S-1
    local_exp: dict = field(default_factory=dict)   # label -> [(segment, weight)] by |weight| desc
    intercept: dict = field(default_factory=dict)   # label -> surrogate intercept
    score: dict = field(default_factory=dict)       # label -> weighted R^2 of the surrogate
    local_pred: dict = field(default_factory=dict)  # label -> surrogate's value at the image
    top_labels: list = field(default_factory=list)  # explained labels, most probable first
    probabilities: np.ndarray | None = None         # (K,) the classifier's outputs for the image itself

    def weight_map(self, label) -> np.ndarray:
        """(H, W) float32: each pixel's superpixel weight for `label` (0 where unselected)."""
        w = np.zeros(self.segments.max() + 1, np.float32)
        for s, v in self.local_exp[label]:
            w[s] = v
        return w[self.segments]

    def image_and_mask(self, label, positive_only=False, negative_only=False, hide_rest=False,
                       num_features=11, min_weight=0.05, image=None):
        """lime's ImageExplanation.get_image_and_mask (seed defaults); `image` (H,W,3) to draw
        on, default the explained image (grey replicated to 3 channels)."""
        if label not in self.local_exp:
            raise KeyError("Label not in explanation")
        if positive_only and negative_only:
            raise ValueError("Positive_only and negative_only cannot be true at the same time.")
        image = self.image if image is None else image
        image = np.repeat(image, 3, -1) if image.shape[-1] == 1 else image
        seg, exp = self.segments, self.local_exp[label]
        mask = np.zeros(seg.shape, seg.dtype)
        temp = np.zeros(image.shape) if hide_rest else image.copy()
        if positive_only or negative_only:
            fs = [f for f, w in exp if (w > 0 and w > min_weight if positive_only else w < 0 and -w > min_weight)]
            for f in fs[:num_features]:
                temp[seg == f] = image[seg == f]
                mask[seg == f] = 1
            return temp, mask
        for f, w in exp[:num_features]:
            if np.abs(w) < min_weight:
                continue
            mask[seg == f] = -1 if w < 0 else 1
            temp[seg == f] = image[seg == f]
            temp[seg == f, 0 if w < 0 else 1] = np.max(image)
        return temp, mask


def samples(num_samples: int, n_seg: int, seed: int | None) -> np.ndarray:
    """(num_samples, n_seg) on/off superpixels, row 0 all on: lime's draws for random_state=seed."""
    data = np.random.RandomState(seed).randint(0, 2, num_samples * n_seg).reshape(num_samples, n_seg)
    data[0, :] = 1
    return data


def score(model: nn.Module, img: torch.Tensor, seg: np.ndarray, data: np.ndarray, outputs: str,
          batch_size: int | None) -> np.ndarray:
    """The model's outputs (float64, (S, K)) for the perturbed images: hidden superpixels
    filled with their mean colour per channel (lime's hide_color=None)."""
    n_seg, c = int(seg.max()) + 1, img.shape[0]
    seg_t = torch.as_tensor(seg, device=img.device).reshape(-1)
    sums = torch.zeros(c, n_seg, dtype=torch.float64, device=img.device).index_add_(1, seg_t, img.reshape(c, -1).double())
    fill = (sums / torch.bincount(seg_t, minlength=n_seg))[:, seg_t].reshape(img.shape).float()
    diff = img - fill
    data_t = torch.as_tensor(data, dtype=torch.float32, device=img.device)
    cap = batch_size or auto_batch_size(model, img, grad=False, cap=len(data))
    out = []

    def run(i, j):
        mask = data_t[i:j, seg_t].reshape(j - i, 1, *img.shape[1:])   # (B,1,H,W) 1 = shown
        xb = fill + mask * diff
        if xb.device.type == "cpu":   # oneDNN convolutions are faster on NHWC
            xb = xb.contiguous(memory_format=torch.channels_last)
        y = model(xb).float()
        out.append(torch.softmax(y, 1) if outputs == "probabilities" else y)

    with evaluating(model):
        run_chunked(model, img, len(data), cap, batch_size is None and img.device.type == "cpu", run)
    return torch.cat(out).double().cpu().numpy()


def cosine_distances(X: np.ndarray, x0: np.ndarray) -> np.ndarray:
    """1 - cos(X_i, x0) per row, clipped to [0, 2] (scikit-learn's cosine distances)."""
    X, x0 = np.asarray(X, np.float64), np.asarray(x0, np.float64)
    norms = np.linalg.norm(X, axis=1) * np.linalg.norm(x0)
    cos = np.divide(X @ x0, norms, out=np.zeros(len(X)), where=norms > 0)
    return np.clip(1.0 - cos, 0.0, 2.0)


def fit(hwc: np.ndarray, seg: np.ndarray, data: np.ndarray, P: np.ndarray, labels, top_labels: int | None,
        num_features: int, feature_selection: str, kernel_width: float) -> LimeExplanation:
    """lime's surrogate: cosine-kernel weights, feature selection, a weighted Ridge per label."""
    d = cosine_distances(data, data[0])
    w = np.sqrt(np.exp(-(d ** 2) / kernel_width ** 2))
    if labels is not None:
        todo = [int(t) for t in torch.as_tensor(labels).reshape(-1)]
    else:
        todo = list(np.argsort(P[0])[-top_labels:][::-1]) if top_labels else [1]
    out = LimeExplanation(hwc, seg, top_labels=[int(t) for t in todo], probabilities=P[0].astype(np.float32))
    X = data.astype(np.float64)
    for lab in out.top_labels:
        used = select_features(X, P[:, lab], w, num_features, feature_selection)
        coef, icpt, r2 = ridge(X[:, used], P[:, lab:lab + 1], w, 1.0)
        out.local_exp[lab] = sorted(zip(used.tolist(), coef[:, 0].tolist()), key=lambda t: abs(t[1]), reverse=True)
        out.intercept[lab], out.score[lab] = float(icpt[0]), float(r2[0])
        out.local_pred[lab] = float(icpt[0] + coef[:, 0].sum())
    return out


@torch.inference_mode()
def lime(model: nn.Module, image: torch.Tensor, num_samples: int = 1000, n_segments: int = 100,
         compactness: float = 1.0, sigma: float = 1.0, seed: int | None = None, labels=None,
         top_labels: int | None = 5, batch_size: int | None = None, segmentation_fn=None,
         num_features: int = 100000, feature_selection: str = "auto", kernel_width: float = 0.25,
         outputs: str = "logits") -> LimeExplanation:
    """Explain ONE image (C,H,W) as the model takes it. labels: explain these classes;
    None: the `top_labels` most probable. segmentation_fn: (H,W,C) numpy -> (H,W) ints
    (default: `slic_segments`). batch_size None: sized from the model's memory use.
    outputs: "logits" (the course exercise) or "probabilities" (softmax) are what the surrogate fits."""
    if outputs not in ("logits", "probabilities"):
        raise ValueError(f"outputs must be 'logits' or 'probabilities', not {outputs!r}")
    x, _ = prepare(model, image[None])
    img = x[0]
    hwc = to_numpy(img.permute(1, 2, 0))
    hwc64 = hwc.astype(np.float64)   # what lime hands its segmentation_fn
    seg = np.asarray((segmentation_fn or (lambda a: slic_segments(a, n_segments, compactness, sigma)))(hwc64))
    seg = np.unique(seg, return_inverse=True)[1].reshape(seg.shape)   # ids 0..S-1
    data = samples(num_samples, int(seg.max()) + 1, seed)
    P = score(model, img, seg, data, outputs, batch_size)
    return fit(hwc, seg, data, P, labels, top_labels, num_features, feature_selection, kernel_width)


def explain(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, params) -> Explanation:
    """Per image (its samples batched): maps = heatmaps = (N,H,W) per-pixel superpixel
    weight of the label; pictures: get_image_and_mask on the min-max normalised image."""
    shown = to_numpy(rgb(normalize(images.detach().float())))
    maps, pics = [], []
    for i in range(len(images)):
        checkpoint()
        lab = int(labels[i])
        r = lime(model, images[i], params.num_samples, params.n_segments, params.compactness, params.sigma,
                 seed=params.seed, labels=[lab], outputs=params.outputs)
        maps.append(r.weight_map(lab))
        pics.append(r.image_and_mask(lab, positive_only=params.positive_only, num_features=params.num_features,
                                     min_weight=params.min_weight, image=shown[i])[0])
    maps = np.stack(maps).astype(np.float32)
    return Explanation(maps=maps, pictures=np.stack(pics).astype(np.float32).clip(0, 1), heatmaps=maps)

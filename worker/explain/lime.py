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
A unit's images go through as one stream (`lime_many`): segmented in a pool beside the
device, their perturbations scored in full batches across images (in the chosen
`precision`), each image's result the same as alone with the same seed.
"""
from __future__ import annotations

import contextlib
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .batching import prepare
from .context import DEFAULT, RunContext
from .hooks import evaluating
from .lime_base import ridge, select_features
from .pictures import normalize, rgb, to_numpy
from .precision import NAMES, choose_scored
from .result import Explanation


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
    precision: str = "fp32"                         # the dtype the perturbations were scored in
    guard: str = ""                                 # the precision guard's verdict (`precision.Verdict`)

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


def submit(pool: ThreadPoolExecutor | None, fn, *args) -> Future:
    """fn(*args) in `pool` beside the device work, or at once (a finished future) without one."""
    if pool is not None:
        return pool.submit(fn, *args)
    done: Future = Future()
    done.set_result(fn(*args))
    return done


def side_threads() -> int:
    """Threads for a call's own side pool when the run brings none: SLIC releases the GIL, so
    threads segment in parallel."""
    return max(2, min(8, (os.cpu_count() or 2) // 2))


PROBE = 16   # perturbed copies the precision guard compares (and keeps, as scored rows)


@dataclass
class Perturbed:
    """One image's LIME samples and what builds their perturbed copies on the device."""

    index: int                  # the image's place in the batch
    hwc: np.ndarray
    seg: np.ndarray             # (H, W) superpixel ids 0..S-1
    data: np.ndarray            # (num_samples, S) on/off, row 0 all on
    fill: torch.Tensor          # (C, H, W) each pixel's superpixel mean colour
    diff: torch.Tensor          # image - fill
    seg_t: torch.Tensor         # (H*W,) superpixel of each pixel
    data_t: torch.Tensor        # data as float32 on the device
    outputs: list = field(default_factory=list)

    @classmethod
    def of(cls, index: int, img: torch.Tensor, hwc: np.ndarray, seg: np.ndarray, num_samples: int,
           seed) -> "Perturbed":
        seg = np.unique(seg, return_inverse=True)[1].reshape(seg.shape)   # ids 0..S-1
        n_seg, c = int(seg.max()) + 1, img.shape[0]
        data = samples(num_samples, n_seg, seed)
        seg_t = torch.as_tensor(seg, device=img.device).reshape(-1)
        sums = torch.zeros(c, n_seg, dtype=torch.float64, device=img.device).index_add_(
            1, seg_t, img.reshape(c, -1).double())
        fill = (sums / torch.bincount(seg_t, minlength=n_seg))[:, seg_t].reshape(img.shape).float()
        return cls(index, hwc, seg, data, fill, img - fill, seg_t,
                   torch.as_tensor(data, dtype=torch.float32, device=img.device))

    def rows(self, i: int, j: int) -> torch.Tensor:
        """Perturbed copies i..j-1 (j-i, C, H, W): hidden superpixels filled with their mean
        colour per channel (lime's hide_color=None); tensor ops only, no loop over samples."""
        mask = self.data_t[i:j, self.seg_t].reshape(j - i, 1, *self.fill.shape[1:])   # 1 = shown
        return torch.addcmul(self.fill, mask, self.diff)


class Stream:
    """Scores the perturbed copies of many images in one stream of full batches (a batch
    may hold the end of one image and the start of the next); `done(p)` gets each image
    once all its rows are scored. Rows are independent, so every image's outputs are the
    ones it gets alone."""

    def __init__(self, forward, size: int, example: torch.Tensor, outputs: str, done, checkpoint):
        self.forward, self.size, self.outputs, self.done = forward, size, outputs, done
        self.checkpoint = checkpoint
        self.buf = torch.empty((size, *example.shape), device=example.device)
        if example.dim() == 3:
            self.buf = self.buf.contiguous(memory_format=torch.channels_last)
        self.n, self.owners = 0, []

    def add(self, p: Perturbed, start: int = 0) -> None:
        """Score p's rows from `start` (the ones before are in p.outputs already)."""
        total = len(p.data)
        if start >= total:
            self.done(p)
        while start < total:
            take = min(total - start, self.size - self.n)
            self.buf[self.n:self.n + take] = p.rows(start, start + take)
            self.owners.append((p, take, start + take == total))
            self.n, start = self.n + take, start + take
            if self.n == self.size:
                self.flush()

    def scores(self, y: torch.Tensor) -> torch.Tensor:
        """What the surrogate fits, from the model's outputs."""
        return torch.softmax(y, 1) if self.outputs == "probabilities" else y

    def flush(self) -> None:
        if not self.n:
            return
        self.checkpoint()
        y = self.scores(self.forward(self.buf[:self.n]))
        at = 0
        for p, take, last in self.owners:
            p.outputs.append(y[at:at + take])
            at += take
            if last:
                self.done(p)
        self.n, self.owners = 0, []


@torch.inference_mode()
def lime_many(model: nn.Module, images: torch.Tensor, labels=None, num_samples: int = 1000, n_segments: int = 100,
              compactness: float = 1.0, sigma: float = 1.0, seed: int | None = None, top_labels: int | None = 5,
              batch_size: int | None = None, segmentation_fn=None, num_features: int = 100000,
              feature_selection: str = "auto", kernel_width: float = 0.25, outputs: str = "logits",
              precision: str = "auto", run: RunContext = DEFAULT) -> list[LimeExplanation]:
    """`lime` for each image of (N,C,H,W), as a stream: images segmented in a pool beside
    the device, all perturbations scored in full batches across images, each surrogate fit
    in the pool as soon as its image is scored. labels: None, or per image the classes to
    explain. Each result equals `lime` of that image alone with the same seed."""
    if outputs not in ("logits", "probabilities"):
        raise ValueError(f"outputs must be 'logits' or 'probabilities', not {outputs!r}")
    x, _ = prepare(model, images)
    with contextlib.ExitStack() as stack:
        pool = run.pool
        if pool is None and len(x) > 1:   # the run brings no side threads: this call's own
            pool = stack.enter_context(ThreadPoolExecutor(side_threads(), thread_name_prefix="xaiq-lime"))
        fits, choice = _stream(model, x, labels, num_samples, n_segments, compactness, sigma, seed, top_labels,
                              batch_size, segmentation_fn, num_features, feature_selection, kernel_width, outputs,
                              precision, run, pool)
        results = [f.result() for f in fits]
    for r in results:
        r.precision, r.guard = NAMES[choice.dtype], str(choice.verdict)
    return results


def _stream(model, x, labels, num_samples, n_segments, compactness, sigma, seed, top_labels, batch_size,
            segmentation_fn, num_features, feature_selection, kernel_width, outputs, precision, run, pool):
    """Segment in `pool`, score every image's perturbations in one stream, fit in `pool`:
    (the fits' futures, the precision `Choice` the scoring ran with)."""
    hwcs = to_numpy(x.permute(0, 2, 3, 1))
    segment = segmentation_fn or (lambda a: slic_segments(a, n_segments, compactness, sigma))
    segs = [submit(pool, segment, h.astype(np.float64)) for h in hwcs]   # float64: what lime hands it
    fits = []

    def done(p: Perturbed) -> None:
        P = torch.cat(p.outputs).double().cpu().numpy()
        lab = None if labels is None else labels[p.index]
        fits.append(submit(pool, fit, p.hwc, p.seg, p.data, P, lab, top_labels, num_features, feature_selection,
                           kernel_width))

    perturbed = lambda i: Perturbed.of(i, x[i], hwcs[i], np.asarray(segs[i].result()), num_samples, seed)  # noqa: E731
    with evaluating(model):
        first = perturbed(0)
        probe = min(PROBE, num_samples)   # the guard's probe: the first image's first perturbations
        choice = choose_scored(model, precision, first.rows(0, probe), run)
        size = batch_size or run.batch_size(model, x[0], "lime", choice.dtype, cap=len(x) * num_samples)
        stream = Stream(choice.forward, size, x[0], outputs, done, run.checkpoint)
        if choice.scored is not None:   # the guard scored these rows already, in the chosen precision
            first.outputs.append(stream.scores(choice.scored))
        stream.add(first, probe if choice.scored is not None else 0)
        for i in range(1, len(x)):
            stream.add(perturbed(i))
        stream.flush()
    return fits, choice


def lime(model: nn.Module, image: torch.Tensor, num_samples: int = 1000, n_segments: int = 100,
         compactness: float = 1.0, sigma: float = 1.0, seed: int | None = None, labels=None,
         top_labels: int | None = 5, batch_size: int | None = None, segmentation_fn=None,
         num_features: int = 100000, feature_selection: str = "auto", kernel_width: float = 0.25,
         outputs: str = "logits", precision: str = "auto", run: RunContext = DEFAULT) -> LimeExplanation:
    """Explain ONE image (C,H,W) as the model takes it. labels: explain these classes;
    None: the `top_labels` most probable. segmentation_fn: (H,W,C) numpy -> (H,W) ints
    (default: `slic_segments`). batch_size None: the service's measured size, else a default.
    outputs: "logits" (the default: raw scores) or "probabilities" (softmax) are what the surrogate fits.
    precision: of the scoring passes, 'fp32', 'bf16' or 'fp16' as asked, or 'auto': the device's
    fast reduced dtype unless it disagrees with fp32 on 16 of the perturbed copies
    (`precision.choose_scored`), else fp32. The guard's verdict is in `.guard` either way."""
    return lime_many(model, image[None], None if labels is None else [labels], num_samples, n_segments,
                     compactness, sigma, seed, top_labels, batch_size, segmentation_fn, num_features,
                     feature_selection, kernel_width, outputs, precision, run)[0]


def explain(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, params,
            run: RunContext = DEFAULT) -> Explanation:
    """All images in one stream (`lime_many`): maps = heatmaps = (N,H,W) per-pixel superpixel
    weight of the label; pictures: get_image_and_mask on the min-max normalised image."""
    shown = to_numpy(rgb(normalize(images.detach().float())))
    labs = [int(t) for t in labels]
    rs = lime_many(model, images, [[t] for t in labs], params.num_samples, params.n_segments, params.compactness,
                   params.sigma, seed=params.seed, outputs=params.outputs, precision=params.precision, run=run)
    maps = np.stack([r.weight_map(t) for r, t in zip(rs, labs)]).astype(np.float32)
    pics = [r.image_and_mask(t, positive_only=params.positive_only, num_features=params.num_features,
                             min_weight=params.min_weight, image=shown[i])[0] for i, (r, t) in enumerate(zip(rs, labs))]
    return Explanation(maps=maps, pictures=np.stack(pics).astype(np.float32).clip(0, 1), heatmaps=maps,
                       precision=rs[0].precision, guard=rs[0].guard)

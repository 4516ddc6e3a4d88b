"""Causal tests of shortcut candidates (`worker.audit.shortcuts.select`) on the model.

For a candidate region of class c (all model passes are here; no storage calls):

- removal: the region is replaced in up to `images` of the group's images (`fill`:
  'swap' = the same region of an image of another class, 'blur' = the image blurred
  there, 'mean' = the image's mean colour); per image, whether it loses class c
  (and the drop of c's probability), minus the mean of the same change made to
  `controls` same-size regions elsewhere in that image.
- paste: the region of a class-c image is pasted, in place, into up to 2 x `images` images
  of other classes (from the pool; a marker the class needs but that is not enough on its
  own moves only some of them, so this test needs more images than the removal); per image, whether the prediction moves to c (and the rise of c's
  probability), minus the mean of pasting `controls` same-size regions from elsewhere in
  the same source image (each in its own place).

Each effect is the mean over images with a percentile bootstrap interval at confidence
1 - alpha / m (Bonferroni over the m = 2 x candidates tests of the audit). Decision:
  flag       paste low > min_effect, or removal low > min_removal and paste low > min_transfer
  near-miss  otherwise; reason 'may be the object itself' where the class needs the region
             (removal low > min_removal) but it carries (almost) nothing into other images.
Accuracy, not probability, decides: with an unsure model a needed marker took accuracy
from 1.0 to 0.1 while the probability effect read only 0.41. Both are reported.

Forward passes per candidate: (k + k') x (2 + controls), k = the class images tested,
k' = the other images pasted into (`forward_passes`, counted in the audit's estimate).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Literal

import numpy as np
from scipy.ndimage import gaussian_filter

from shared.schemas import SHORTCUT_POOL, shortcut_passes

Predict = Callable[[np.ndarray], np.ndarray]   # pixels (n, C, H, W) in [0, 1] -> probabilities (n, K)


@dataclass(frozen=True)
class ShortcutParams:
    candidates: int = 12
    images: int = 64
    controls: int = 4
    fill: Literal["swap", "blur", "mean"] = "swap"
    alpha: float = 0.05
    min_effect: float = 0.25
    min_removal: float = 0.5
    min_transfer: float = 0.1
    pool: int = SHORTCUT_POOL     # other images read for swaps and pastes
    resamples: int = 4000         # bootstrap
    seed: int = 0

    @classmethod
    def from_options(cls, opts: dict) -> "ShortcutParams":
        """From an audit's `options` (shortcut_* keys; `seed`)."""
        keys = ("candidates", "images", "controls", "fill", "alpha", "min_effect", "min_removal", "min_transfer")
        return cls(**{k: opts[f"shortcut_{k}"] for k in keys if f"shortcut_{k}" in opts}, seed=opts.get("seed", 0))


def forward_passes(params: ShortcutParams, n_images: int) -> int:
    """Upper bound of the tests' forward passes for an audit of n images (exact when every
    candidate has `images` images of its class and the pool `images` of other classes)."""
    return shortcut_passes(params.candidates, params.images, params.controls, n_images, params.pool)


def bootstrap_interval(values: np.ndarray, confidence: float, resamples: int, rng) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (as scipy.stats.bootstrap(method='percentile'))."""
    v = np.asarray(values, np.float64)
    if len(v) == 0:
        return float("nan"), float("nan")
    means = v[rng.integers(0, len(v), (resamples, len(v)))].mean(1)
    a = 1 - confidence
    lo, hi = np.percentile(means, [100 * a / 2, 100 * (1 - a / 2)])
    return float(lo), float(hi)


def _paste(dst: np.ndarray, src: np.ndarray, box, at=None) -> np.ndarray:
    """dst with src's box (x0, y0, x1, y1) copied into place `at` (default the same box)."""
    x0, y0, x1, y1 = box
    ax0, ay0 = (x0, y0) if at is None else at[:2]
    out = dst.copy()
    out[:, ay0:ay0 + y1 - y0, ax0:ax0 + x1 - x0] = src[:, y0:y1, x0:x1]
    return out


def control_boxes(box, size, n: int, rng) -> list[tuple[int, int, int, int]]:
    """n same-size boxes at random places not overlapping `box` (overlapping only if none fits)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    H, W = size
    ys, xs = np.mgrid[0:H - h + 1, 0:W - w + 1]
    ys, xs = ys.ravel(), xs.ravel()
    apart = (xs + w <= x0) | (xs >= x1) | (ys + h <= y0) | (ys >= y1)
    if apart.any():
        ys, xs = ys[apart], xs[apart]
    else:
        other = (xs != x0) | (ys != y0)
        ys, xs = (ys[other], xs[other]) if other.any() else (ys, xs)
    j = rng.choice(len(ys), n, replace=len(ys) < n)
    return [(int(xs[i]), int(ys[i]), int(xs[i]) + w, int(ys[i]) + h) for i in j]


def _fill(img: np.ndarray, donor: np.ndarray, box, fill: str) -> np.ndarray:
    if fill == "swap":
        return _paste(img, donor, box)
    x0, y0, x1, y1 = box
    out = img.copy()
    if fill == "mean":
        out[:, y0:y1, x0:x1] = img.mean(axis=(1, 2), keepdims=True)
    else:   # blur: a Gaussian as wide as the region's shorter side / 2
        s = max(1.0, min(x1 - x0, y1 - y0) / 2)
        out[:, y0:y1, x0:x1] = gaussian_filter(img, sigma=(0, s, s), mode="nearest")[:, y0:y1, x0:x1]
    return out


def _predict(predict: Predict, x: list[np.ndarray], counter: list[int]) -> np.ndarray:
    counter[0] += len(x)
    return np.asarray(predict(np.stack(x).astype(np.float32)), np.float64)


def _effect(acc: np.ndarray, prob: np.ndarray, confidence: float, params: ShortcutParams, rng, **raw) -> dict:
    if len(acc) == 0:     # no image to test on (an audit of one class has none to paste into): no effect seen
        return {"n": 0, "accuracy_effect": 0.0, "low": 0.0, "high": 0.0, "probability_effect": 0.0,
                "probability_low": 0.0, "probability_high": 0.0, **{k: 0.0 for k in raw}}
    lo, hi = bootstrap_interval(acc, confidence, params.resamples, rng)
    plo, phi = bootstrap_interval(prob, confidence, params.resamples, rng)
    return {"n": int(len(acc)), "accuracy_effect": round(float(acc.mean()), 4), "low": round(lo, 4),
            "high": round(hi, 4), "probability_effect": round(float(prob.mean()), 4),
            "probability_low": round(plo, 4), "probability_high": round(phi, 4),
            **{k: round(float(v), 4) for k, v in raw.items()}}


def check_candidate(predict: Predict, cand: dict, own: np.ndarray, others: np.ndarray, size, params: ShortcutParams,
                   confidence: float, rng, counter: list[int]) -> tuple[dict, dict, dict]:
    """Removal and paste tests of one candidate: (removal, paste, example images).
    own: (k, C, H, W) the class's images; others: (k', C, H, W) other classes' images."""
    c, box = cand["class"], tuple(cand["region"])
    k, kp, nc = len(own), len(others), params.controls
    # removal: donors for 'swap' from the other images
    donors = others[rng.integers(0, kp, k)] if kp else own[::-1]
    ctrl = [control_boxes(box, size, nc, rng) for _ in range(k)]
    batch = list(own) + [_fill(own[i], donors[i], box, params.fill) for i in range(k)] + \
        [_fill(own[i], donors[i], b, params.fill) for i in range(k) for b in ctrl[i]]
    p = _predict(predict, batch, counter)
    p0, p1, pc = p[:k], p[k:2 * k], p[2 * k:].reshape(k, nc, p.shape[1])
    in0, in1, inc = p0.argmax(1) == c, p1.argmax(1) == c, pc.argmax(2) == c
    acc = (in0.astype(float) - in1) - (in0[:, None].astype(float) - inc).mean(1)
    prob = (p0[:, c] - p1[:, c]) - (p0[:, c][:, None] - pc[:, :, c]).mean(1)
    removal = _effect(acc, prob, confidence, params, rng, before=in0.mean(), after=in1.mean(),
                      control_after=inc.mean())
    # paste: a class image's region into each other image, in place
    sources = own[rng.integers(0, k, kp)]
    ctrl_p = [control_boxes(box, size, nc, rng) for _ in range(kp)]
    batch = list(others) + [_paste(others[j], sources[j], box) for j in range(kp)] + \
        [_paste(others[j], sources[j], b) for j in range(kp) for b in ctrl_p[j]]
    q = _predict(predict, batch, counter) if kp else np.zeros((0, p.shape[1]))
    q0, q1, qc = q[:kp], q[kp:2 * kp], q[2 * kp:].reshape(kp, nc, q.shape[1])   # kp may be 0: one class
    out0, out1, outc = q0.argmax(1) == c, q1.argmax(1) == c, qc.argmax(2) == c
    acc = (out1.astype(float) - out0) - (outc.astype(float) - out0[:, None]).mean(1)
    prob = (q1[:, c] - q0[:, c]) - (qc[:, :, c] - q0[:, c][:, None]).mean(1)
    paste = _effect(acc, prob, confidence, params, rng, before=out0.mean() if kp else 0.0,
                    after=out1.mean() if kp else 0.0, control_after=outc.mean() if kp else 0.0)
    show = min(4, k)
    moved = np.argsort(-(q1[:, c] - q0[:, c]))[:min(4, kp)] if kp else []
    examples = {
        "removed": [(own[i], _fill(own[i], donors[i], box, params.fill), float(p0[i, c]), float(p1[i, c]))
                    for i in range(show)],
        "pasted": [(others[j], _paste(others[j], sources[j], box), float(q0[j, c]), float(q1[j, c])) for j in moved],
    }
    return removal, paste, examples


def decide(removal: dict, paste: dict, params: ShortcutParams) -> tuple[bool, str]:
    """(flagged, why)."""
    r, t = removal["low"], paste["low"]
    if t > params.min_effect:
        return True, "pasting the region moves other images to the class"
    if r > params.min_removal and t > params.min_transfer:
        return True, "the class needs the region and it carries into other images"
    if r > params.min_removal:
        return False, "may be the object itself: the class needs the region, but it carries (almost) nothing " \
                      "into other images"
    return False, "no significant effect"


def run_tests(predict: Predict, candidates: list[dict], pixels: dict[int, np.ndarray], labels: dict[int, int],
              params: ShortcutParams = ShortcutParams(), class_names: list[str] | None = None
              ) -> tuple[list[dict], list[dict], list[dict], dict]:
    """Test every candidate on the model. pixels: dataset index -> (C, H, W) in [0, 1] (the
    candidates' images and a pool of others); labels: index -> class.
    Returns (flags, near_misses, evidence images per flag, summary)."""
    rng = np.random.default_rng(params.seed)
    m = 2 * len(candidates)
    confidence = 1 - params.alpha / max(m, 1)
    counter = [0]
    avail = np.array(sorted(pixels), int)
    flags, near, evidence = [], [], []
    for cand in candidates:
        c = cand["class"]
        mine = [i for i in cand["image_indices"] if i in pixels]
        if len(mine) > params.images:
            mine = sorted(rng.choice(mine, params.images, replace=False).tolist())
        rest = [int(i) for i in avail if labels[int(i)] != c]
        if len(rest) > min(2 * params.images, params.pool):
            rest = sorted(rng.choice(rest, min(2 * params.images, params.pool), replace=False).tolist())
        if not mine:
            continue
        own = np.stack([pixels[i] for i in mine]).astype(np.float32)
        others = np.stack([pixels[i] for i in rest]).astype(np.float32) if rest else own[:0]
        size = own.shape[2:]
        removal, paste, ex = check_candidate(predict, cand, own, others, size, params, confidence, rng, counter)
        ok, why = decide(removal, paste, params)
        x0, y0, x1, y1 = cand["region"]
        H, W = size
        item = {
            "class": c, "class_name": class_names[c] if class_names else str(c),
            "kind": "shortcut" if ok else "near_miss", "method": cand["method"], "group": cand["group"],
            "evidence": {
                "region": {"pixels": [x0, y0, x1, y1], "fractions": [x0 / W, y0 / H, x1 / W, y1 / H]},
                "image_indices": mine, "methods": cand.get("methods", [cand["method"]]),
                "groups": cand.get("groups", [cand["group"]]), "scores": cand["scores"],
                "removal": removal, "paste": paste, "confidence": round(confidence, 6), "reason": why,
                "prototype": cand.get("prototype"), "thresholds": asdict(params)},
        }
        (flags if ok else near).append(item)
        if ok:
            evidence.append(ex)
    summary = {"candidates": len(candidates), "tests": m, "confidence": round(confidence, 6),
               "forward_passes": counter[0], "fill": params.fill}
    return flags, near, evidence, summary

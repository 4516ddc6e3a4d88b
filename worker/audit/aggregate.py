"""Streaming aggregation of a dataset audit: one `Partial` per work unit, merged by
the final task one at a time, then `summarise`d.

A partial holds, for its images: dataset indices, labels, predictions and the
predicted-class probability; the confusion matrix; per method the per-class *sum* of
normalised maps at `map_size` (mean maps), a small per-image map at `thumb_size`
(float16, for shortcut clustering), 4 faithfulness floats per image
(deletion, insertion, deletion_random, insertion_random; NaN if not computed) and the
sum of the images' deletion/insertion curves (4 x (steps + 1), with their count: the
report's mean curves).

Pooled map = relevance mass distribution (Arras et al. 2022, "CLEVR-XAI",
https://doi.org/10.1016/j.inffus.2021.11.008): negatives clipped to 0, average-pooled
to the small size, divided by its sum (all-zero -> uniform), then scaled by the
number of cells so that a uniform map is 1 everywhere (well inside float16 range).

Size per image and method: thumb_size^2 * 2 B (16x16: 512 B) + 16 B faithfulness;
plus 28 B per image. 10k images x 4 methods at 16x16: ~21 MB in memory for the merged
audit, plus the dense (K, 32, 32) float64 sums (8 KB per class and method). A stored
partial holds the sums of the classes present in its unit only (float32, 4 KB per
class and method at 32x32): for units of 32 digits (10 classes), measured ~1.5 KB per
image and method, compressed. Full-size maps are never kept.

Explanation-quality metrics (`metrics.QUALITY_KEYS`) and the methods' agreement (Spearman
per pair of methods) are streamed: a partial keeps per class only the count, sum and sum of
squares of each (finite values; NaN = not computed), so a merged audit holds their mean and
spread per class without any per-image value. A unit's own per-image values ride along in
`unit_quality` / `unit_agreement` for its item.json, never stored nor merged.

Serialisation: `Partial.to_bytes()` / `Partial.from_bytes()` -- a compressed npz,
no pickle (the metadata is a JSON string).
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import QUALITY_KEYS
from .shortcuts import mass_maps

FAITH_KEYS = ("deletion", "insertion", "deletion_random", "insertion_random")
FORMAT = "xaiq.audit.partial/1"


def method_pairs(methods: list[str]) -> list[tuple[str, str]]:
    """The pairs of methods the agreement is measured for, in a fixed order."""
    return [(a, b) for i, a in enumerate(methods) for b in methods[i + 1:]]


def moments(values, labels, n_classes: int) -> np.ndarray:
    """(K, 3) float64: per class the count, sum and sum of squares of the finite values."""
    v = np.asarray(values, np.float64)
    ok = np.isfinite(v)
    out = np.zeros((n_classes, 3))
    lab = np.asarray(labels, np.int64)[ok]
    np.add.at(out, (lab, 0), 1.0)
    np.add.at(out, (lab, 1), v[ok])
    np.add.at(out, (lab, 2), v[ok] ** 2)
    return out


def pooled_mass_maps(heatmaps, size: int) -> np.ndarray:
    """(N, H, W) importance -> (N, size, size) float32: the positive part average-pooled,
    as a relevance mass distribution (`shortcuts.mass_maps`) scaled to mean 1."""
    h = torch.as_tensor(np.nan_to_num(np.asarray(heatmaps, np.float32))).clamp_min(0)[:, None]
    pooled = F.adaptive_avg_pool2d(h, size)[:, 0].double().numpy()
    return (mass_maps(pooled) * size**2).astype(np.float32)


@dataclass
class Partial:
    n_classes: int
    methods: list[str]
    input_size: tuple[int, int]
    map_size: int = 32
    thumb_size: int = 16
    indices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    preds: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    confidence: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    confusion: np.ndarray | None = None                     # (K, K) int64, rows = label
    map_sums: dict[str, np.ndarray] = field(default_factory=dict)   # (K, S, S) float64
    thumbs: dict[str, np.ndarray] = field(default_factory=dict)     # (n, s, s) float16
    faith: dict[str, np.ndarray] = field(default_factory=dict)      # (n, 4) float32
    quality: dict[str, np.ndarray] = field(default_factory=dict)    # (K, len(QUALITY_KEYS), 3) moments
    agreement: np.ndarray | None = None                              # (pairs, K, 3) moments
    unit_quality: dict = field(default_factory=dict)     # this unit's {method: {metric: (n,)}}, not stored
    unit_agreement: dict = field(default_factory=dict)   # this unit's {(a, b): (n,)}, not stored
    curve_sums: dict[str, np.ndarray] = field(default_factory=dict)  # (4, steps + 1) float64, FAITH_KEYS order
    curve_counts: dict[str, int] = field(default_factory=dict)       # images summed in curve_sums

    def __post_init__(self):
        k = self.n_classes
        if self.confusion is None:
            self.confusion = np.zeros((k, k), np.int64)
        if self.agreement is None:
            self.agreement = np.zeros((len(method_pairs(self.methods)), k, 3))
        for m in self.methods:
            self.map_sums.setdefault(m, np.zeros((k, self.map_size, self.map_size)))
            self.thumbs.setdefault(m, np.zeros((0, self.thumb_size, self.thumb_size), np.float16))
            self.faith.setdefault(m, np.zeros((0, 4), np.float32))
            self.quality.setdefault(m, np.zeros((k, len(QUALITY_KEYS), 3)))

    @property
    def n(self) -> int:
        return len(self.indices)

    @classmethod
    def from_batch(cls, indices, labels, probs, heatmaps: dict[str, np.ndarray], *, n_classes: int,
                   faithfulness: dict[str, dict[str, np.ndarray]] | None = None,
                   map_size: int = 32, thumb_size: int = 16,
                   quality: dict[str, dict[str, np.ndarray]] | None = None,
                   agreement: dict[tuple[str, str], np.ndarray] | None = None) -> "Partial":
        """One unit's partial. probs (N, K) model probabilities; heatmaps method -> (N, H, W);
        faithfulness method -> {deletion, insertion, deletion_random, insertion_random: (N,)},
        and "curves" (4, N, steps + 1) if computed (`deletion_insertion(return_curves=True)`);
        quality method -> {metric: (N,)} (`metrics.unit_quality`); agreement (a, b) -> (N,)."""
        probs = np.asarray(probs, np.float32)
        labels = np.asarray(labels, np.int64)
        preds = probs.argmax(1).astype(np.int64)
        methods = list(heatmaps)
        h, w = np.asarray(next(iter(heatmaps.values()))).shape[-2:] if methods else (0, 0)
        p = cls(n_classes, methods, (int(h), int(w)), map_size, thumb_size,
                indices=np.asarray(indices, np.int64), labels=labels, preds=preds,
                confidence=probs.max(1))
        np.add.at(p.confusion, (labels, preds), 1)
        for m in methods:
            big = pooled_mass_maps(heatmaps[m], map_size)
            np.add.at(p.map_sums[m], labels, big.astype(np.float64))
            p.thumbs[m] = pooled_mass_maps(heatmaps[m], thumb_size).astype(np.float16)
            f = (faithfulness or {}).get(m)
            p.faith[m] = (np.stack([np.asarray(f[k], np.float32) for k in FAITH_KEYS], 1) if f is not None
                          else np.full((len(labels), 4), np.nan, np.float32))
            if f is not None and f.get("curves") is not None:
                p.add_curves(m, np.asarray(f["curves"], np.float64))
        p.add_quality(labels, quality or {}, agreement or {})
        return p

    def add_quality(self, labels, quality: dict, agreement: dict) -> None:
        """Count a unit's per-image metric values into the per-class moments."""
        nan = np.full(len(labels), np.nan)
        self.unit_quality = {m: {k: np.asarray(quality.get(m, {}).get(k, nan), np.float64) for k in QUALITY_KEYS}
                             for m in self.methods}
        self.unit_agreement = {pair: np.asarray(agreement.get(pair, nan), np.float64)
                               for pair in method_pairs(self.methods)}
        for m, values in self.unit_quality.items():
            self.quality[m] += np.stack([moments(values[k], labels, self.n_classes) for k in QUALITY_KEYS], 1)
        for j, pair in enumerate(method_pairs(self.methods)):
            self.agreement[j] += moments(self.unit_agreement[pair], labels, self.n_classes)

    def add_curves(self, method: str, curves: np.ndarray, count: int | None = None) -> None:
        """Add (4, N, S) per-image curves (images with a non-finite point are left out), or
        with `count`, (4, S) sums of that many images."""
        if count is None:
            curves = curves[:, np.isfinite(curves).all((0, 2))]
            curves, count = curves.sum(1), curves.shape[1]
        if not count:
            return
        if method in self.curve_sums and self.curve_sums[method].shape != curves.shape:
            raise ValueError(f"incompatible curves of {method}: {curves.shape} vs {self.curve_sums[method].shape}")
        self.curve_sums[method] = self.curve_sums.get(method, 0) + curves
        self.curve_counts[method] = self.curve_counts.get(method, 0) + int(count)

    # --- serialisation -------------------------------------------------------------
    def to_bytes(self) -> bytes:
        meta = {"format": FORMAT, "n_classes": self.n_classes, "methods": self.methods,
                "input_size": list(self.input_size), "map_size": self.map_size, "thumb_size": self.thumb_size}
        arrays = {"meta": np.array(json.dumps(meta)), "indices": self.indices, "labels": self.labels,
                  "preds": self.preds, "confidence": self.confidence, "confusion": self.confusion}
        present = np.unique(self.labels)                     # only the classes in this unit
        arrays["map_classes"] = present
        for j, m in enumerate(self.methods):
            arrays[f"map_sums_{j}"] = self.map_sums[m][present].astype(np.float32)
            arrays[f"thumbs_{j}"] = self.thumbs[m]
            arrays[f"faith_{j}"] = self.faith[m]
            arrays[f"quality_{j}"] = self.quality[m][present]
            if m in self.curve_sums:
                arrays[f"curves_{j}"] = self.curve_sums[m]
                arrays[f"curve_n_{j}"] = np.int64(self.curve_counts[m])
        arrays["agreement"] = self.agreement[:, present]
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Partial":
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != FORMAT:
                raise ValueError(f"not an audit partial: {meta.get('format')!r}")
            ms = meta["methods"]
            present = z["map_classes"]
            k = meta["n_classes"]
            sums, quality = {}, {}
            agreement = np.zeros((len(method_pairs(ms)), k, 3))
            for j, m in enumerate(ms):
                sums[m] = np.zeros((k, meta["map_size"], meta["map_size"]))
                sums[m][present] = z[f"map_sums_{j}"]
                quality[m] = np.zeros((k, len(QUALITY_KEYS), 3))
                if f"quality_{j}" in z.files:   # partials written before the metrics have none
                    quality[m][present] = z[f"quality_{j}"]
            if "agreement" in z.files:
                agreement[:, present] = z["agreement"]
            p = cls(meta["n_classes"], ms, tuple(meta["input_size"]), meta["map_size"], meta["thumb_size"],
                    indices=z["indices"], labels=z["labels"], preds=z["preds"],
                    confidence=z["confidence"], confusion=z["confusion"],
                    map_sums=sums,
                    thumbs={m: z[f"thumbs_{j}"] for j, m in enumerate(ms)},
                    faith={m: z[f"faith_{j}"] for j, m in enumerate(ms)},
                    quality=quality, agreement=agreement)
            for j, m in enumerate(ms):   # partials written before curves were kept have none
                if f"curves_{j}" in z:
                    p.add_curves(m, z[f"curves_{j}"], int(z[f"curve_n_{j}"]))
            return p


def merge(partials: Iterable[Partial | bytes]) -> Partial:
    """Merge partials one by one (bytes are decoded as they come). Raises on
    incompatible partials or on an image index seen twice. Per-image arrays come out
    sorted by dataset index."""
    out, seen = None, set()
    per_image: dict[str, list] = {}
    for p in partials:
        p = Partial.from_bytes(p) if isinstance(p, (bytes, bytearray, memoryview)) else p
        key = (p.n_classes, tuple(p.methods), tuple(p.input_size), p.map_size, p.thumb_size)
        if out is None:
            out = Partial(p.n_classes, list(p.methods), tuple(p.input_size), p.map_size, p.thumb_size)
            ref, per_image = key, {k: [] for k in ("indices", "labels", "preds", "confidence")}
            per_image.update({f"t:{m}": [] for m in p.methods} | {f"f:{m}": [] for m in p.methods})
        elif key != ref:
            raise ValueError(f"incompatible partials: {key} vs {ref}")
        dup = seen.intersection(p.indices.tolist())
        if dup:
            raise ValueError(f"image indices merged twice: {sorted(dup)[:10]}")
        seen.update(p.indices.tolist())
        out.confusion += p.confusion
        out.agreement += p.agreement
        for k in ("indices", "labels", "preds", "confidence"):
            per_image[k].append(getattr(p, k))
        for m in p.methods:
            out.map_sums[m] += p.map_sums[m]
            out.quality[m] += p.quality[m]
            if m in p.curve_sums:
                out.add_curves(m, p.curve_sums[m], p.curve_counts[m])
            per_image[f"t:{m}"].append(p.thumbs[m])
            per_image[f"f:{m}"].append(p.faith[m])
    if out is None:
        raise ValueError("no partials to merge")
    order = np.argsort(np.concatenate(per_image["indices"]), kind="stable")
    for k in ("indices", "labels", "preds", "confidence"):
        setattr(out, k, np.concatenate(per_image[k])[order])
    for m in out.methods:
        out.thumbs[m] = np.concatenate(per_image[f"t:{m}"])[order]
        out.faith[m] = np.concatenate(per_image[f"f:{m}"])[order]
    return out


def _stats(f: np.ndarray) -> dict:
    """Faithfulness statistics of rows (n, 4) (NaN rows ignored)."""
    f = f[np.isfinite(f).all(1)]
    if not len(f):
        return {"n": 0, **{k: None for k in FAITH_KEYS}, "deletion_beats_random": None, "insertion_beats_random": None}
    return {"n": int(len(f)), **{k: float(f[:, j].mean()) for j, k in enumerate(FAITH_KEYS)},
            "deletion_beats_random": float(np.mean(f[:, 0] < f[:, 2])),
            "insertion_beats_random": float(np.mean(f[:, 1] > f[:, 3]))}


def moment_stats(m: np.ndarray) -> dict:
    """{n, mean, std} (population std) from one row of moments (count, sum, sum of squares)."""
    n = int(m[0])
    if not n:
        return {"n": 0, "mean": None, "std": None}
    mean = m[1] / n
    return {"n": n, "mean": float(mean), "std": float(np.sqrt(max(m[2] / n - mean**2, 0.0)))}


def quality_summary(moments_k: np.ndarray) -> dict:
    """{overall, per_class} stats from (K, 3) moments."""
    return {"overall": moment_stats(moments_k.sum(0)), "per_class": [moment_stats(r) for r in moments_k]}


def mean_curves(merged: Partial, method: str) -> dict | None:
    """The mean deletion/insertion curves of a method (target probability at each fraction
    of pixels changed), for its order and the random one; None if none were kept."""
    n = merged.curve_counts.get(method, 0)
    if not n:
        return None
    mean = merged.curve_sums[method] / n
    return {"n": n, "fraction": np.linspace(0, 1, mean.shape[1]).round(4).tolist(),
            **{key: mean[j].round(5).tolist() for j, key in enumerate(FAITH_KEYS)}}


def summarise(merged: Partial, class_names: list[str] | None = None, bins: int = 20) -> dict:
    """JSON-ready summary: accuracy, confusion, per-class accuracy, per-method
    faithfulness (overall and per class), AUC histograms, per-class mean maps
    (map_size^2, uniform = 1), quality metrics and the methods' agreement ({n, mean, std}
    overall and per class)."""
    k = merged.n_classes
    names = list(class_names) if class_names else [str(i) for i in range(k)]
    counts = merged.confusion.sum(1)
    correct = np.diag(merged.confusion)
    edges = np.linspace(0, 1, bins + 1)
    methods = {}
    for m in merged.methods:
        f = merged.faith[m]
        finite = np.isfinite(f).all(1)
        methods[m] = {
            "faithfulness": {
                "overall": _stats(f),
                "per_class": [_stats(f[merged.labels == c]) for c in range(k)],
                "histograms": {"bin_edges": edges.round(4).tolist(),
                               **{key: np.histogram(np.clip(f[finite, j], 0, 1), edges)[0].tolist()
                                  for j, key in enumerate(FAITH_KEYS)}},
            },
            "mean_maps": [(merged.map_sums[m][c] / counts[c]).round(4).tolist() if counts[c] else None
                          for c in range(k)],
            "quality": {key: quality_summary(merged.quality[m][:, j]) for j, key in enumerate(QUALITY_KEYS)},
            "curves": mean_curves(merged, m),
        }
    return {
        "n_images": int(merged.n),
        "n_classes": k,
        "classes": names,
        "methods": list(merged.methods),
        "input_size": list(merged.input_size),
        "accuracy": float(correct.sum() / max(1, merged.n)),
        "confusion": merged.confusion.tolist(),
        "per_class": [{"class": c, "name": names[c], "count": int(counts[c]), "correct": int(correct[c]),
                       "accuracy": float(correct[c] / counts[c]) if counts[c] else None} for c in range(k)],
        "per_method": methods,
        "agreement": [{"methods": list(pair), **quality_summary(merged.agreement[j])}
                      for j, pair in enumerate(method_pairs(merged.methods))],
    }

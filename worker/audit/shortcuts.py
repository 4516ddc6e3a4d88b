"""Shortcut ("Clever Hans") detection in the spirit of SpRAy (Lapuschkin et al.,
"Unmasking Clever Hans predictors and assessing what machines really learn",
Nature Communications 10, 1096 (2019), https://doi.org/10.1038/s41467-019-08987-4).

Input: small per-image attribution maps (e.g. 16x16) with their class labels.

1. Each map is turned into a *relevance mass distribution*: negatives clipped to 0,
   divided by its sum (an all-zero map becomes uniform).
2. Per class, the maps are clustered by spectral clustering (symmetrised k-nearest-
   neighbour connectivity affinity, as in SpRAy); the number of clusters k is chosen
   by the largest eigengap of the normalised graph Laplacian in [1, max_clusters].
   Candidates are the whole class and each cluster of at least `min_cluster_size`.
   A class larger than `max_per_class` is represented by a seeded sample of that size
   (clustering, scores and the reported image indices).
3. For a candidate with mean map P (sum 1) and the reference Q = mean map of all
   other images -- the other classes and the rest of its own class -- (smoothed with
   `ref_smoothing` of uniform mass; uniform if there are none), the
   region B is the axis-aligned box of area <= `max_area_frac` of the image that
   maximises the excess mass P(B) - region_gamma * Q(B) (exhaustive search with
   summed-area tables): the place where this group's attribution is concentrated
   beyond what the other classes use there.
4. The candidate is flagged as a shortcut when all hold:
     mass        = P(B)                    >= min_mass         (a large share of relevance,
                                                                cf. relevance mass, Arras et al. 2022,
                                                                https://doi.org/10.1016/j.inffus.2021.11.008)
     area_frac   = |B| / (H W)             <= max_area_frac    (a compact, small region)
     lift        = P(B) / Q(B)             >= min_lift         (not where other classes look)
     consistency = share of its images i with p_i(B) >= consistency_ratio * P(B)
                                           >= min_consistency  (the same place in each image)
     size        >= min_cluster_size and >= min_cluster_frac of the class.
   Flagged groups of one class with overlapping regions (box IoU > 0.3) are one finding:
   they are merged (union of images, scores re-evaluated) while the union still passes.

Calibration (tests/worker/audit): |gradient| maps on the digits, 16x16 maps, 5 seeds.
DigitsCNN with a planted 4x4 corner patch on class 3: lift 5.8-7.8 (mass 0.21-0.29);
without it the highest lift of any class or cluster is 3.3 (strokes typical of one
digit, e.g. the top bar of a 5). A smaller, sharper CNN without a patch reaches 4.2
for small style clusters. Hence min_lift = 4.5. Plain gradients are diffuse: only
~20-30 % of relevance lands on a patch the model fully relies on, hence min_mass 0.1.
Other methods and models may need other thresholds: all are parameters, and every
evaluated group's scores come back with `return_candidates=True`.

Pure numpy / scikit-learn; no I/O.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy.sparse.csgraph import laplacian
from sklearn.cluster import SpectralClustering
from sklearn.neighbors import kneighbors_graph


@dataclass(frozen=True)
class ShortcutParams:
    max_area_frac: float = 0.10    # largest region, as a fraction of the image
    region_gamma: float = 2.0      # region search: maximise P(B) - region_gamma * Q(B)
    min_mass: float = 0.10
    min_lift: float = 4.5
    min_consistency: float = 0.6
    consistency_ratio: float = 0.5
    min_cluster_size: int = 8
    min_cluster_frac: float = 0.05
    max_clusters: int = 6
    n_neighbors: int = 10
    ref_smoothing: float = 0.05
    max_per_class: int = 1500      # images per class used for clustering (seeded sample)
    seed: int = 0


def mass_maps(maps: np.ndarray) -> np.ndarray:
    """(N, h, w) -> relevance mass distributions: positive part, each summing to 1."""
    m = np.clip(np.nan_to_num(np.asarray(maps, np.float64)), 0, None)
    s = m.sum(axis=(1, 2), keepdims=True)
    uniform = np.full_like(m, 1.0 / (m.shape[1] * m.shape[2]))
    return np.where(s > 0, m / np.where(s > 0, s, 1), uniform)


def _affinity(x: np.ndarray, n_neighbors: int) -> np.ndarray:
    conn = kneighbors_graph(x, n_neighbors=min(n_neighbors, len(x) - 1), include_self=True)
    return (0.5 * (conn + conn.T)).toarray()


def choose_k(affinity: np.ndarray, max_clusters: int) -> int:
    """Number of clusters by the largest eigengap of the normalised Laplacian."""
    lam = np.linalg.eigvalsh(laplacian(affinity, normed=True))
    kmax = min(max_clusters, len(lam) - 1)
    if kmax < 2:
        return 1
    gaps = np.diff(lam[: kmax + 1])           # gaps[k-1] = lam_{k+1} - lam_k (1-based)
    return int(np.argmax(gaps) + 1)


def cluster(maps: np.ndarray, params: ShortcutParams = ShortcutParams()) -> np.ndarray:
    """Spectral clustering of one class's mass maps; returns a label per map."""
    n = len(maps)
    if n < max(2 * params.min_cluster_size, 4):
        return np.zeros(n, int)
    x = maps.reshape(n, -1) * maps[0].size     # uniform map = 1 everywhere
    aff = _affinity(x, params.n_neighbors)
    k = choose_k(aff, params.max_clusters)
    if k == 1:
        return np.zeros(n, int)
    sc = SpectralClustering(n_clusters=k, affinity="precomputed", random_state=params.seed,
                            assign_labels="cluster_qr")
    with warnings.catch_warnings():   # a kNN graph may be disconnected; that is a clustering too
        warnings.simplefilter("ignore", UserWarning)
        return sc.fit_predict(aff)


def _integral(m: np.ndarray) -> np.ndarray:
    """(..., h, w) -> (..., h+1, w+1) summed-area table."""
    out = np.zeros(m.shape[:-2] + (m.shape[-2] + 1, m.shape[-1] + 1))
    out[..., 1:, 1:] = m.cumsum(-2).cumsum(-1)
    return out


def _boxes(h: int, w: int):
    ys = np.array([(a, b) for a in range(h) for b in range(a + 1, h + 1)])
    xs = np.array([(a, b) for a in range(w) for b in range(a + 1, w + 1)])
    y0, y1 = np.repeat(ys[:, 0], len(xs)), np.repeat(ys[:, 1], len(xs))
    x0, x1 = np.tile(xs[:, 0], len(ys)), np.tile(xs[:, 1], len(ys))
    return y0, y1, x0, x1


def _box_sums(integral: np.ndarray, y0, y1, x0, x1) -> np.ndarray:
    i = integral
    return i[..., y1, x1] - i[..., y0, x1] - i[..., y1, x0] + i[..., y0, x0]


def best_region(p: np.ndarray, q: np.ndarray, max_area_frac: float, gamma: float):
    """Box (y0, y1, x0, x1) on the map grid maximising P(B) - gamma Q(B), area-capped."""
    h, w = p.shape
    y0, y1, x0, x1 = _boxes(h, w)
    ok = (y1 - y0) * (x1 - x0) <= max(1, max_area_frac * h * w)
    y0, y1, x0, x1 = y0[ok], y1[ok], x0[ok], x1[ok]
    score = _box_sums(_integral(p), y0, y1, x0, x1) - gamma * _box_sums(_integral(q), y0, y1, x0, x1)
    j = int(np.argmax(score))
    return int(y0[j]), int(y1[j]), int(x0[j]), int(x1[j])


def _to_input(box, grid, input_size):
    """Grid box -> input pixel box (x0, y0, x1, y1), end-exclusive, as adaptive pooling bins."""
    (y0, y1, x0, x1), (gh, gw), (H, W) = box, grid, input_size
    return (int(np.floor(x0 * W / gw)), int(np.floor(y0 * H / gh)),
            int(np.ceil(x1 * W / gw)), int(np.ceil(y1 * H / gh)))


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def evaluate_group(m: np.ndarray, q: np.ndarray, params: ShortcutParams) -> dict:
    """Region and scores of one group of mass maps (n, h, w) against reference q (h, w)."""
    h, w = q.shape
    p = m.mean(0)
    box = best_region(p, q, params.max_area_frac, params.region_gamma)
    y0, y1, x0, x1 = box
    mass = float(p[y0:y1, x0:x1].sum())
    ref = float(q[y0:y1, x0:x1].sum())
    per_image = m[:, y0:y1, x0:x1].sum(axis=(1, 2))
    return {
        "box": box,
        "prototype": p,
        "mass": mass,
        "reference_mass": ref,
        "area_frac": (y1 - y0) * (x1 - x0) / (h * w),
        "lift": mass / ref if ref > 0 else float("inf"),
        "consistency": float(np.mean(per_image >= params.consistency_ratio * mass)),
    }


class _Groups:
    """Evaluates groups of one dataset's mass maps against the rest of the dataset."""

    def __init__(self, m: np.ndarray, params: ShortcutParams, input_size: tuple[int, int]):
        self.m, self.params, self.input_size = m, params, input_size
        self.grid = m.shape[1:]
        self.total = m.sum(0)
        self.uniform = np.full(self.grid, 1.0 / (self.grid[0] * self.grid[1]))

    def evaluate(self, members: np.ndarray) -> tuple[dict, bool]:
        p, group, rest = self.params, self.m[members], len(self.m) - len(members)
        q = (self.total - group.sum(0)) / rest if rest else self.uniform
        q = (1 - p.ref_smoothing) * q + p.ref_smoothing * self.uniform
        ev = evaluate_group(group, q, p)
        ok = (ev["mass"] >= p.min_mass and ev["area_frac"] <= p.max_area_frac
              and ev["lift"] >= p.min_lift and ev["consistency"] >= p.min_consistency)
        return ev, ok

    def candidates(self, sample: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """The whole (sampled) class and each of its clusters big enough to count."""
        assign = cluster(self.m[sample], self.params)
        groups = [("class", sample)]
        if np.unique(assign).size > 1:
            groups += [(f"cluster {k}", sample[assign == k]) for k in np.unique(assign)]
        min_size = max(self.params.min_cluster_size, self.params.min_cluster_frac * len(sample))
        return [(name, members) for name, members in groups if len(members) >= min_size]

    def merge_overlapping(self, found: list[tuple]) -> list[tuple]:
        """Flagged groups of one class for the same region are one finding: merged while the union still passes."""
        kept: list[tuple] = []
        for name, members, ev in sorted(found, key=lambda g: -len(g[1])):
            box = _to_input(ev["box"], self.grid, self.input_size)
            j = next((j for j, k in enumerate(kept)
                      if _iou(box, _to_input(k[2]["box"], self.grid, self.input_size)) > 0.3), None)
            if j is None:
                kept.append((name, members, ev))
                continue
            kname, kmembers, _ = kept[j]
            union = np.union1d(kmembers, members)
            if len(union) > len(kmembers):
                uev, uok = self.evaluate(union)
                if uok:
                    kept[j] = (kname if kname == "class" else "clusters", union, uev)
        return kept


def detect_shortcuts(
    maps: np.ndarray,
    labels: np.ndarray,
    indices: np.ndarray | None = None,
    *,
    input_size: tuple[int, int] | None = None,
    params: ShortcutParams = ShortcutParams(),
    method: str | None = None,
    class_names: list[str] | None = None,
    return_candidates: bool = False,
):
    """Flag shortcut regions per class. maps (N, h, w) any importance, labels (N,),
    indices (N,) dataset indices (default 0..N-1); input_size (H, W) of the model input
    (default: the map size). Returns a list of flag dicts (see REPORT.md), or
    (flags, candidates) with every evaluated group if `return_candidates`."""
    m = mass_maps(maps)
    labels = np.asarray(labels)
    indices = np.arange(len(m)) if indices is None else np.asarray(indices)
    groups = _Groups(m, params, tuple(input_size or m.shape[1:]))
    rng = np.random.default_rng(params.seed)
    flags, candidates = [], []
    for c in np.unique(labels):
        in_c = np.flatnonzero(labels == c)
        sample = in_c if len(in_c) <= params.max_per_class else np.sort(rng.choice(in_c, params.max_per_class, replace=False))
        found = []   # (name, members, ev), flagged
        for name, members in groups.candidates(sample):
            ev, ok = groups.evaluate(members)
            candidates.append({"class": int(c), "group": name, "n_images": len(members), "flagged": ok,
                               **{k: v for k, v in ev.items() if k != "prototype"}})
            if ok:
                found.append((name, members, ev))
        flags += [_flag(int(c), name, members, ev, indices, groups.grid, groups.input_size, params,
                        method, class_names, len(in_c)) for name, members, ev in groups.merge_overlapping(found)]
    return (flags, candidates) if return_candidates else flags


def _flag(c, name, members, ev, indices, grid, input_size, params, method, class_names, class_size) -> dict:
    H, W = input_size
    x0, y0, x1, y1 = _to_input(ev["box"], grid, input_size)
    return {
        "class": c,
        "class_name": class_names[c] if class_names else str(c),
        "kind": "shortcut",
        "method": method,
        "group": name,
        "evidence": {
            "region": {"pixels": [x0, y0, x1, y1], "fractions": [x0 / W, y0 / H, x1 / W, y1 / H]},
            "image_indices": [int(i) for i in indices[members]],
            "scores": {
                "mass": round(ev["mass"], 4),
                "reference_mass": round(ev["reference_mass"], 4),
                "lift": round(min(ev["lift"], 1e6), 3),
                "area_frac": round(ev["area_frac"], 4),
                "consistency": round(ev["consistency"], 4),
                "cluster_size": int(len(members)),
                "class_size": int(class_size),
            },
            "prototype": np.round(ev["prototype"], 5).tolist(),
            "thresholds": asdict(params),
        },
    }

"""Shortcut ("Clever Hans") candidates in the spirit of SpRAy (Lapuschkin et al.,
"Unmasking Clever Hans predictors and assessing what machines really learn",
Nature Communications 10, 1096 (2019), https://doi.org/10.1038/s41467-019-08987-4).

The maps only *propose* regions; whether the model relies on one is decided by testing
it on the model (`worker.audit.causal`). A threshold on map mass alone both misses
markers (a diffuse method spreads their relevance) and flags the object itself (the
strokes of a digit concentrate relevance too).

1. Each map is turned into a *relevance mass distribution*: negatives clipped to 0,
   divided by its sum (an all-zero map becomes uniform).
2. For every method, per class, the maps are clustered by spectral clustering on a
   sparse, symmetrised k-nearest-neighbour graph (as in SpRAy); the number of clusters
   is chosen by the largest eigengap of the normalised Laplacian in [1, max_clusters].
   The groups are the whole class and each cluster of at least `min_cluster_size` maps
   (a class larger than `max_per_class` is represented by a seeded sample).
3. For a group with mean map P and the reference Q = mean map of all other images
   (smoothed with `ref_smoothing` of uniform mass), the region B is the axis-aligned box
   of area <= `max_area_frac` that maximises the excess mass P(B) - region_gamma Q(B):
   where this group's attribution concentrates beyond the rest of the data set.
4. `select`: candidates of one class whose boxes overlap (IoU > `merge_iou`) are one
   region (found by several methods or clusters: their names are listed, the best one's
   region and images kept);
   the best regions are taken round robin over the classes (each class's best first)
   up to `candidates`.

Pure numpy / scipy / scikit-learn; no I/O.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.sparse.csgraph import laplacian
from sklearn.cluster import SpectralClustering
from sklearn.neighbors import kneighbors_graph


@dataclass(frozen=True)
class ProposalParams:
    max_area_frac: float = 0.10    # largest region, as a fraction of the image
    region_gamma: float = 2.0      # region search: maximise P(B) - region_gamma * Q(B)
    min_cluster_size: int = 8
    min_cluster_frac: float = 0.05
    max_clusters: int = 6
    n_neighbors: int = 10
    ref_smoothing: float = 0.05
    max_per_class: int = 400       # maps per class clustered (seeded sample)
    merge_iou: float = 0.3
    seed: int = 0


def mass_maps(maps: np.ndarray) -> np.ndarray:
    """(N, h, w) -> relevance mass distributions: positive part, each summing to 1."""
    m = np.clip(np.nan_to_num(np.asarray(maps, np.float64)), 0, None)
    s = m.sum(axis=(1, 2), keepdims=True)
    uniform = np.full_like(m, 1.0 / (m.shape[1] * m.shape[2]))
    return np.where(s > 0, m / np.where(s > 0, s, 1), uniform)


def _affinity(x: np.ndarray, n_neighbors: int):
    """Sparse symmetrised kNN connectivity."""
    conn = kneighbors_graph(x, n_neighbors=min(n_neighbors, len(x) - 1), include_self=True)
    return (0.5 * (conn + conn.T)).tocsr()


def choose_k(affinity, max_clusters: int) -> int:
    """Number of clusters by the largest eigengap of the normalised Laplacian."""
    lap = laplacian(affinity, normed=True)
    lam = np.linalg.eigvalsh(lap.toarray() if hasattr(lap, "toarray") else lap)
    kmax = min(max_clusters, len(lam) - 1)
    if kmax < 2:
        return 1
    gaps = np.diff(lam[: kmax + 1])           # gaps[k-1] = lam_{k+1} - lam_k (1-based)
    return int(np.argmax(gaps) + 1)


def cluster(maps: np.ndarray, params: ProposalParams = ProposalParams()) -> np.ndarray:
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


def to_input(box, grid, input_size) -> tuple[int, int, int, int]:
    """Grid box (y0, y1, x0, x1) -> input pixel box (x0, y0, x1, y1), end-exclusive, as adaptive pooling bins."""
    (y0, y1, x0, x1), (gh, gw), (H, W) = box, grid, input_size
    return (int(np.floor(x0 * W / gw)), int(np.floor(y0 * H / gh)),
            int(np.ceil(x1 * W / gw)), int(np.ceil(y1 * H / gh)))


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def _groups(m: np.ndarray, sample: np.ndarray, params: ProposalParams) -> list[tuple[str, np.ndarray]]:
    """The whole (sampled) class and each of its clusters big enough to count."""
    assign = cluster(m[sample], params)
    groups = [("class", sample)]
    if np.unique(assign).size > 1:
        groups += [(f"cluster {k}", sample[assign == k]) for k in np.unique(assign)]
    min_size = max(params.min_cluster_size, params.min_cluster_frac * len(sample))
    return [(name, members) for name, members in groups if len(members) >= min(min_size, len(sample))]


def propose(maps: dict[str, np.ndarray], labels: np.ndarray, indices: np.ndarray | None = None, *,
            input_size: tuple[int, int] | None = None, params: ProposalParams = ProposalParams()) -> list[dict]:
    """Candidate regions from every method's maps (method -> (N, h, w)), per class and per
    cluster of a class's maps. Each: class, method, group, region (input pixels x0, y0, x1,
    y1), image_indices (the group's dataset indices), scores (mass, reference_mass, excess,
    lift, area_frac, group_size, class_size) and prototype (the group's mean map)."""
    labels = np.asarray(labels)
    out = []
    for method, raw in maps.items():
        m = mass_maps(raw)
        idx = np.arange(len(m)) if indices is None else np.asarray(indices)
        grid, size = m.shape[1:], tuple(input_size or m.shape[1:])
        total, uniform = m.sum(0), np.full(m.shape[1:], 1.0 / (m.shape[1] * m.shape[2]))
        rng = np.random.default_rng(params.seed)
        for c in np.unique(labels):
            in_c = np.flatnonzero(labels == c)
            sample = in_c if len(in_c) <= params.max_per_class else \
                np.sort(rng.choice(in_c, params.max_per_class, replace=False))
            for name, members in _groups(m, sample, params):
                group, rest = m[members], len(m) - len(members)
                q = (total - group.sum(0)) / rest if rest else uniform
                q = (1 - params.ref_smoothing) * q + params.ref_smoothing * uniform
                p = group.mean(0)
                box = best_region(p, q, params.max_area_frac, params.region_gamma)
                y0, y1, x0, x1 = box
                mass, ref = float(p[y0:y1, x0:x1].sum()), float(q[y0:y1, x0:x1].sum())
                out.append({
                    "class": int(c), "method": method, "group": name,
                    "region": list(to_input(box, grid, size)),
                    "image_indices": [int(i) for i in idx[members]],
                    "scores": {"mass": round(mass, 4), "reference_mass": round(ref, 4),
                               "excess": round(mass - params.region_gamma * ref, 4),
                               "lift": round(min(mass / ref if ref > 0 else 1e6, 1e6), 3),
                               "area_frac": round((y1 - y0) * (x1 - x0) / (grid[0] * grid[1]), 4),
                               "group_size": int(len(members)), "class_size": int(len(in_c))},
                    "prototype": np.round(p * p.size, 4).tolist(),
                })
    return out


def select(candidates: list[dict], n: int, merge_iou: float = ProposalParams.merge_iou) -> list[dict]:
    """Merge one class's overlapping regions (their methods and groups listed; the best
    scoring one's region and images kept: the images whose attribution is there), then take the best `n` round robin over the classes."""
    per_class: dict[int, list[dict]] = {}
    for cand in sorted(candidates, key=lambda d: -d["scores"]["excess"]):
        kept = per_class.setdefault(cand["class"], [])
        same = next((k for k in kept if iou(k["region"], cand["region"]) > merge_iou), None)
        if same is None:
            kept.append({**cand, "methods": [cand["method"]], "groups": [f"{cand['method']}: {cand['group']}"]})
            continue
        if cand["method"] not in same["methods"]:
            same["methods"].append(cand["method"])
        same["groups"].append(f"{cand['method']}: {cand['group']}")
    chosen, rank = [], 0
    while len(chosen) < n and any(rank < len(v) for v in per_class.values()):
        for c in sorted(per_class):
            if rank < len(per_class[c]) and len(chosen) < n:
                chosen.append(per_class[c][rank])
        rank += 1
    return chosen

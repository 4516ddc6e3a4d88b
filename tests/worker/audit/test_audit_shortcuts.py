import numpy as np

from worker.audit.shortcuts import ShortcutParams, best_region, detect_shortcuts, mass_maps


def blob(h, w, cy, cx, s):
    yy, xx = np.mgrid[:h, :w]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s**2))


def synthetic(h=12, w=20, n=40, seed=0):
    """3 classes, diffuse maps around the middle with class-specific shifts (like
    object parts) and noise: no shortcut."""
    rng = np.random.default_rng(seed)
    maps, labels = [], []
    for c, (cy, cx) in enumerate([(5, 8), (6, 10), (6, 12)]):
        for _ in range(n):
            m = blob(h, w, cy + rng.normal(0, 1), cx + rng.normal(0, 1.5), 3.0) + 0.3 * rng.random((h, w))
            maps.append(m)
            labels.append(c)
    return np.array(maps), np.array(labels)


def test_best_region_finds_the_box():
    p = np.full((8, 8), 0.2 / 60)
    p[1:3, 5:7] = 0.2
    p /= p.sum()
    q = np.full((8, 8), 1 / 64)
    assert best_region(p, q, 0.1, 2.0) == (1, 3, 5, 7)


def test_mass_maps():
    m = mass_maps(np.stack([np.ones((3, 3)), -np.ones((3, 3))]))
    np.testing.assert_allclose(m.sum(axis=(1, 2)), 1)
    np.testing.assert_allclose(m[1], 1 / 9)


def test_no_flag_without_shortcut():
    maps, labels = synthetic()
    assert detect_shortcuts(maps, labels) == []


def test_whole_class_shortcut_flagged_on_non_square_input():
    maps, labels = synthetic()
    rng = np.random.default_rng(1)
    maps[labels == 1, 9:11, 16:19] += 2.0 + rng.random((40, 2, 3))       # bottom-right tag
    idx = np.arange(len(maps)) + 1000
    flags = detect_shortcuts(maps, labels, idx, input_size=(48, 80), method="m", class_names=["a", "b", "c"])
    assert len(flags) == 1
    f = flags[0]
    assert (f["class"], f["class_name"], f["kind"], f["method"]) == (1, "b", "shortcut", "m")
    x0, y0, x1, y1 = f["evidence"]["region"]["pixels"]
    assert x0 <= 16 * 4 and y0 <= 9 * 4 and x1 >= 19 * 4 and y1 >= 11 * 4        # contains the tag (4 px per cell)
    assert (x1 - x0) * (y1 - y0) <= 0.1 * 48 * 80
    np.testing.assert_allclose(f["evidence"]["region"]["fractions"], [x0 / 80, y0 / 48, x1 / 80, y1 / 48])
    assert sorted(f["evidence"]["image_indices"]) == list(idx[labels == 1])
    s = f["evidence"]["scores"]
    assert s["lift"] >= 4.5 and s["consistency"] >= 0.9 and s["cluster_size"] == 40


def test_shortcut_on_part_of_a_class_is_found_by_clustering():
    maps, labels = synthetic(n=60)
    rng = np.random.default_rng(2)
    c2 = np.flatnonzero(labels == 2)
    marked = rng.choice(c2, 25, replace=False)
    maps[marked, 0:2, 0:3] += 3.0                                           # watermark, top-left
    flags = detect_shortcuts(maps, labels, input_size=(12, 20))
    assert [f["class"] for f in flags] == [2]
    got = set(flags[0]["evidence"]["image_indices"])
    assert len(got & set(marked)) >= 0.9 * len(marked) and len(got - set(marked)) <= 3
    assert flags[0]["group"].startswith("cluster")
    x0, y0, x1, y1 = flags[0]["evidence"]["region"]["pixels"]
    assert x0 == 0 and y0 == 0 and x1 <= 6 and y1 <= 4


def test_thresholds_are_parameters():
    maps, labels = synthetic()
    maps[labels == 1, 9:11, 16:19] += 2.0
    assert detect_shortcuts(maps, labels, params=ShortcutParams(min_lift=1e6)) == []
    flags, cands = detect_shortcuts(maps, labels, return_candidates=True)
    assert {c["class"] for c in cands} == {0, 1, 2} and sum(c["flagged"] for c in cands) >= 1

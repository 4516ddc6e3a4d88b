import numpy as np

from worker.audit.shortcuts import best_region, mass_maps, propose, select


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


def test_a_whole_class_tag_is_its_best_candidate_on_non_square_input():
    maps, labels = synthetic()
    rng = np.random.default_rng(1)
    maps[labels == 1, 9:11, 16:19] += 2.0 + rng.random((40, 2, 3))       # bottom-right tag
    idx = np.arange(len(maps)) + 1000
    cands = propose({"m": maps}, labels, idx, input_size=(48, 80))
    best = select(cands, 3)
    assert [c["class"] for c in best] == [0, 1, 2]                          # round robin, each class's best first
    f = best[1]
    x0, y0, x1, y1 = f["region"]
    assert x0 <= 16 * 4 and y0 <= 9 * 4 and x1 >= 19 * 4 and y1 >= 11 * 4        # contains the tag (4 px per cell)
    assert (x1 - x0) * (y1 - y0) <= 0.1 * 48 * 80
    assert sorted(f["image_indices"]) == list(idx[labels == 1])
    assert f["scores"]["lift"] >= 4.5 and f["scores"]["excess"] > max(best[0]["scores"]["excess"],
                                                                       best[2]["scores"]["excess"])


def test_a_tag_on_part_of_a_class_is_proposed_by_its_cluster():
    maps, labels = synthetic(n=60)
    rng = np.random.default_rng(2)
    c2 = np.flatnonzero(labels == 2)
    marked = rng.choice(c2, 25, replace=False)
    maps[marked, 0:2, 0:3] += 3.0                                           # watermark, top-left
    cands = [c for c in propose({"m": maps}, labels, input_size=(12, 20)) if c["class"] == 2]
    top = max(cands, key=lambda c: c["scores"]["excess"])
    assert top["group"].startswith("cluster")
    got = set(top["image_indices"])
    assert len(got & set(marked)) >= 8 and len(got - set(marked)) <= 3                # the marked images
    x0, y0, x1, y1 = top["region"]
    assert x0 == 0 and y0 == 0 and x1 <= 6 and y1 <= 4


def test_duplicates_from_several_methods_are_merged_and_the_count_is_capped():
    maps, labels = synthetic()
    maps[labels == 1, 9:11, 16:19] += 2.0
    other = maps + 0.05 * np.random.default_rng(3).random(maps.shape)
    cands = propose({"a": maps, "b": other}, labels)
    chosen = select(cands, 100)
    tag = [c for c in chosen if c["class"] == 1 and c["region"][0] >= 14]
    assert len(tag) == 1 and sorted(tag[0]["methods"]) == ["a", "b"]
    assert len({(c["class"], tuple(c["region"])) for c in chosen}) == len(chosen)
    assert len(select(cands, 2)) == 2 and [c["class"] for c in select(cands, 2)] == [0, 1]

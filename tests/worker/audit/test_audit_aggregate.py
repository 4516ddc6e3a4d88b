import numpy as np
import pytest

from worker.audit.aggregate import FAITH_KEYS, Partial, merge, pooled_mass_maps, summarise

K, METHODS = 4, ["saliency", "gradcam"]


def batch(n=20, seed=0, first=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, K, n)
    probs = rng.random((n, K))
    probs /= probs.sum(1, keepdims=True)
    maps = {m: rng.random((n, 24, 24)).astype(np.float32) - 0.2 for m in METHODS}
    faith = {"saliency": {k: rng.random(n).astype(np.float32) for k in FAITH_KEYS}}   # gradcam: not computed
    return np.arange(first, first + n), labels, probs, maps, faith


def partial(idx, labels, probs, maps, faith):
    return Partial.from_batch(idx, labels, probs, maps, n_classes=K, faithfulness=faith, thumb_size=8)


def assert_same(a, b):
    for k in ("indices", "labels", "preds", "confidence", "confusion"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    for m in METHODS:
        np.testing.assert_allclose(a.map_sums[m], b.map_sums[m], rtol=1e-6)  # float32 on disk
        np.testing.assert_array_equal(a.thumbs[m], b.thumbs[m])
        np.testing.assert_array_equal(a.faith[m], b.faith[m])


def test_pooled_mass_maps():
    out = pooled_mass_maps(np.stack([np.ones((6, 6)), np.zeros((6, 6)), -np.ones((6, 6))]), 3)
    assert out.shape == (3, 3, 3)
    np.testing.assert_allclose(out, 1.0)          # uniform, all-zero and all-negative -> uniform


def test_merge_of_two_partials_equals_one_big_partial():
    idx, labels, probs, maps, faith = batch(30)
    whole = partial(idx, labels, probs, maps, faith)
    cut = lambda s: (idx[s], labels[s], probs[s], {m: v[s] for m, v in maps.items()},
                     {m: {k: v[s] for k, v in f.items()} for m, f in faith.items()})
    a, b = partial(*cut(slice(0, 13))), partial(*cut(slice(13, 30)))
    assert_same(merge([a, b]), whole)
    assert_same(merge([b.to_bytes(), a.to_bytes()]), whole)          # any order, from bytes
    assert np.isnan(whole.faith["gradcam"]).all()


def test_npz_round_trip_and_no_pickle():
    p = partial(*batch(10))
    data = p.to_bytes()
    assert data[:2] == b"PK"                                        # a zip (npz)
    assert_same(Partial.from_bytes(data), p)
    assert p.thumbs["saliency"].dtype == np.float16 and p.thumbs["saliency"].shape == (10, 8, 8)


def test_merge_rejects_duplicates_and_mismatches():
    p = partial(*batch(10))
    with pytest.raises(ValueError, match="twice"):
        merge([p, p.to_bytes()])
    idx, labels, probs, maps, faith = batch(10, first=100)
    other = Partial.from_batch(idx, labels, probs, maps, n_classes=K + 1)
    with pytest.raises(ValueError, match="incompatible"):
        merge([p, other])


def test_summarise_known_values():
    probs = np.eye(3)[[0, 1, 1, 2, 0]]                              # preds 0 1 1 2 0
    labels = np.array([0, 1, 2, 2, 1])
    faith = {"m": {"deletion": np.array([.1, .2, .9, .3, .5]), "insertion": np.array([.9, .8, .1, .7, .5]),
                   "deletion_random": np.full(5, .5), "insertion_random": np.full(5, .5)}}
    p = Partial.from_batch(np.arange(5), labels, probs, {"m": np.ones((5, 4, 4))}, n_classes=3,
                           faithfulness=faith, map_size=4, thumb_size=2)
    s = summarise(merge([p]), ["a", "b", "c"])
    assert s["accuracy"] == pytest.approx(3 / 5)
    assert s["confusion"] == [[1, 0, 0], [1, 1, 0], [0, 1, 1]]
    assert [c["accuracy"] for c in s["per_class"]] == [1.0, 0.5, 0.5]
    o = s["per_method"]["m"]["faithfulness"]["overall"]
    assert o["n"] == 5 and o["deletion"] == pytest.approx(0.4)
    assert o["deletion_beats_random"] == pytest.approx(3 / 5) and o["insertion_beats_random"] == pytest.approx(3 / 5)
    assert sum(s["per_method"]["m"]["faithfulness"]["histograms"]["deletion"]) == 5
    np.testing.assert_allclose(s["per_method"]["m"]["mean_maps"][2], np.ones((4, 4)))


def test_mean_curves_survive_bytes_and_merge_and_match_the_mean_auc():
    from worker.audit.aggregate import mean_curves
    from worker.audit.faithfulness import auc

    rng = np.random.default_rng(3)
    curves = rng.random((4, 30, 9))
    curves[:, 7, 2] = np.nan                                          # an image without curves: left out
    idx, labels, probs, maps, _ = batch(30)
    faith = {"saliency": {**{k: auc(curves[j]) for j, k in enumerate(FAITH_KEYS)}, "curves": curves}}
    whole = partial(idx, labels, probs, maps, faith)
    cut = lambda s: (idx[s], labels[s], probs[s], {m: v[s] for m, v in maps.items()},
                     {"saliency": {k: (v[:, s] if k == "curves" else v[s]) for k, v in faith["saliency"].items()}})
    merged = merge([partial(*cut(slice(13, 30))).to_bytes(), partial(*cut(slice(0, 13))).to_bytes()])
    c = mean_curves(merged, "saliency")
    keep = np.ones(30, bool)
    keep[7] = False
    assert c["n"] == 29 and c["fraction"][0] == 0 and c["fraction"][-1] == 1 and len(c["fraction"]) == 9
    for j, k in enumerate(FAITH_KEYS):
        np.testing.assert_allclose(c[k], curves[j, keep].mean(0), atol=1e-5)
        assert auc(np.array(c[k])) == pytest.approx(float(np.nanmean(np.where(keep, auc(curves[j]), np.nan))),
                                                    abs=1e-4)
    assert mean_curves(merged, "gradcam") is None                     # none kept: null in the report
    assert summarise(merged)["per_method"]["saliency"]["curves"] == c
    from worker.audit.report import build_report

    assert build_report(summarise(merged), [], [])["per_method"]["saliency"]["curves"]["n"] == 29   # on the schema
    assert mean_curves(whole, "saliency")["n"] == 29

"""The causal tests of shortcut candidates on hand-made models of known reliance."""
import numpy as np
import pytest
from scipy.stats import bootstrap

from worker.audit.causal import ShortcutParams, bootstrap_interval, control_boxes, forward_passes, run_tests

K, H, W = 3, 16, 16
BOX = [2, 2, 6, 6]          # x0, y0, x1, y1


def data(n=60, seed=0, marker=True):
    """Textured images of 3 classes (class told by mean brightness of the centre); class 0
    carries a bright box at BOX when `marker`."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(K), n // K)
    x = rng.random((len(labels), 1, H, W)).astype(np.float32) * 0.3
    x[:, :, 6:12, 6:12] += (labels[:, None, None, None] * 0.3).astype(np.float32)
    if marker:
        x0, y0, x1, y1 = BOX
        x[labels == 0, :, y0:y1, x0:x1] = 1.0
    return x, labels


def box_reader(x):
    """Reads only the box: class 0 when its mean is > 0.8, else class 1 or 2 by the centre."""
    x0, y0, x1, y1 = BOX
    m = x[:, 0, y0:y1, x0:x1].mean((1, 2))
    centre = x[:, 0, 6:12, 6:12].mean((1, 2))
    logits = np.stack([50 * (m - 0.8), 10 * (0.45 - abs(centre - 0.45)), 10 * (centre - 0.6)], 1)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def centre_reader(x):
    """No special region: the class from the centre's brightness only."""
    centre = x[:, 0, 6:12, 6:12].mean((1, 2))
    logits = -30 * np.abs(centre[:, None] - (0.15 + 0.3 * np.arange(K))[None])
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def candidate(c, region, idx):
    return {"class": c, "method": "saliency", "group": "class", "region": list(region), "image_indices": idx,
            "scores": {"mass": 0.3, "reference_mass": 0.02, "excess": 0.26, "lift": 15.0, "area_frac": 0.06,
                       "group_size": len(idx), "class_size": len(idx)}}


def test_a_model_that_reads_one_box_is_flagged():
    x, y = data()
    pixels, labels = dict(enumerate(x)), dict(enumerate(y.tolist()))
    cands = [candidate(0, BOX, np.flatnonzero(y == 0).tolist()), candidate(1, [10, 10, 14, 14],
                                                                            np.flatnonzero(y == 1).tolist())]
    flags, near, evidence, summary = run_tests(box_reader, cands, pixels, labels, ShortcutParams(images=20))
    assert [f["class"] for f in flags] == [0] and len(evidence) == 1
    ev = flags[0]["evidence"]
    assert ev["removal"]["low"] > 0.5 and ev["paste"]["low"] > 0.25
    assert ev["removal"]["before"] == 1.0 and ev["removal"]["after"] == 0.0
    assert summary["tests"] == 4 and summary["confidence"] == pytest.approx(1 - 0.05 / 4)
    assert [n["class"] for n in near] == [1]
    assert evidence[0]["removed"] and evidence[0]["pasted"]


@pytest.mark.parametrize("fill", ["swap", "blur", "mean"])
def test_every_fill_removes_the_marker(fill):
    x, y = data()
    flags, *_ = run_tests(box_reader, [candidate(0, BOX, np.flatnonzero(y == 0).tolist())], dict(enumerate(x)),
                          dict(enumerate(y.tolist())), ShortcutParams(images=20, fill=fill))
    assert len(flags) == 1 and flags[0]["evidence"]["removal"]["low"] > 0.5


def test_no_special_region_no_flag():
    """A model without a shortcut: over many random regions, false flags stay within alpha."""
    x, y = data(marker=False)
    rng = np.random.default_rng(5)
    cands = []
    for j in range(20):
        x0, y0 = rng.integers(0, W - 4, 2)
        c = j % K
        cands.append(candidate(c, [int(x0), int(y0), int(x0) + 4, int(y0) + 4], np.flatnonzero(y == c).tolist()))
    flags, near, _, summary = run_tests(centre_reader, cands, dict(enumerate(x)), dict(enumerate(y.tolist())),
                                        ShortcutParams(images=20))
    assert len(flags) / len(cands) <= 0.05 and len(near) == len(cands) - len(flags)


def test_bootstrap_matches_scipy():
    rng = np.random.default_rng(0)
    v = rng.choice([0.0, 1.0, -0.25], 64, p=[0.5, 0.3, 0.2])
    conf = 1 - 0.05 / 24
    lo, hi = bootstrap_interval(v, conf, 20000, np.random.default_rng(1))
    ref = bootstrap((v,), np.mean, confidence_level=conf, method="percentile", n_resamples=20000,
                    random_state=np.random.default_rng(2)).confidence_interval
    assert lo == pytest.approx(ref.low, abs=0.03) and hi == pytest.approx(ref.high, abs=0.03)


def test_control_boxes_are_elsewhere_and_the_same_size():
    for b in control_boxes(BOX, (H, W), 10, np.random.default_rng(0)):
        assert b[2] - b[0] == 4 and b[3] - b[1] == 4 and 0 <= b[0] and b[2] <= W and b[3] <= H
        assert b[2] <= BOX[0] or b[0] >= BOX[2] or b[3] <= BOX[1] or b[1] >= BOX[3]


def test_forward_passes_are_counted_exactly():
    x, y = data(n=90)
    calls = []

    def counted(px):
        calls.append(len(px))
        return box_reader(px)
    params = ShortcutParams(images=20, controls=3, candidates=2)
    cands = [candidate(c, BOX, np.flatnonzero(y == c).tolist()) for c in (0, 1)]
    *_, summary = run_tests(counted, cands, dict(enumerate(x)), dict(enumerate(y.tolist())), params)
    assert sum(calls) == summary["forward_passes"] == forward_passes(params, len(x))


def test_options_are_checked_and_the_tests_passes_are_in_the_estimate():
    import pydantic

    from api import intake
    from shared.schemas import AuditOptions

    d = AuditOptions().model_dump()
    assert (d["shortcut_candidates"], d["shortcut_images"], d["shortcut_controls"], d["shortcut_fill"]) == (12, 64, 4, "swap")
    assert ShortcutParams.from_options(d) == ShortcutParams()
    for bad in ({"shortcut_fill": "noise"}, {"shortcut_alpha": 0}, {"shortcut_alpha": 1}, {"shortcut_images": 2},
                {"shortcut_controls": 0}, {"shortcut_min_effect": 1.5}, {"shortcut_candidates": -1}):
        with pytest.raises(pydantic.ValidationError):
            AuditOptions(**bad)
    opts = dict(d, shortcut_candidates=2, shortcut_images=20, shortcut_controls=3)
    methods, info = {"saliency": {}}, {"gflops": 1.0, "layers": []}
    x, y = data(n=90)
    calls = []

    def counted(px):
        calls.append(len(px))
        return box_reader(px)
    cands = [candidate(c, BOX, np.flatnonzero(y == c).tolist()) for c in (0, 1)]
    run_tests(counted, cands, dict(enumerate(x)), dict(enumerate(y.tolist())), ShortcutParams.from_options(opts))
    added = intake.estimate(methods, info, 90, 3, opts) - intake.estimate(methods, info, 90, 3, dict(opts, shortcuts=False))
    assert added == sum(calls) == 2 * (20 + 40) * (2 + 3)

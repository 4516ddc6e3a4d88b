"""xaiq's LIME against the `lime` package (0.2.0.1) on the same segmentation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from lime.lime_image import LimeImageExplainer
from skimage.segmentation import slic

import worker.explain as E
from worker.explain.lime import slic_segments

N_SEG = 40


def seg_fn(a):   # the same function for both: lime hands it (H,W,3) grey replicated, we (H,W,1)
    return slic_segments(a[..., :1], n_segments=N_SEG)


def package_lime(model, img, seed, num_samples, outputs="logits", **kw):
    """The seed's pipeline: numpy HWC (grey -> 3 channels); the seed's classifier_fn
    returns the model's raw outputs, lime's convention is probabilities."""
    def classifier_fn(batch):
        with torch.no_grad():
            t = torch.tensor(batch[..., :1], dtype=torch.float32).permute(0, 3, 1, 2)
            out = model(t)
            return (torch.softmax(out, 1) if outputs == "probabilities" else out).numpy()

    hwc = np.repeat(img.permute(1, 2, 0).numpy().astype(np.float64), 3, -1)
    return LimeImageExplainer(random_state=seed).explain_instance(
        hwc, classifier_fn, segmentation_fn=seg_fn, num_samples=num_samples, batch_size=100,
        random_seed=0, **kw)


def weights(local_exp, n):
    w = np.zeros(n)
    for s, v in local_exp:
        w[s] = v
    return w


@pytest.mark.slow
@pytest.mark.parametrize("outputs", ["logits", "probabilities"])
@pytest.mark.parametrize("num_features", [100000, 10, 4])   # all / highest_weights / forward_selection
def test_same_samples_give_the_packages_explanation(digits, num_features, outputs):
    model, x, _ = digits
    img = x[1]
    ref = package_lime(model, img, 7, 300, outputs, top_labels=3, num_features=num_features)
    ours = E.lime(model, img, num_samples=300, seed=7, precision="fp32", top_labels=3, segmentation_fn=seg_fn,
                  num_features=num_features, outputs=outputs)
    np.testing.assert_array_equal(ours.segments, ref.segments)
    assert ours.top_labels == [int(t) for t in ref.top_labels]
    for lab in ours.top_labels:
        assert [s for s, _ in ours.local_exp[lab]] == [int(s) for s, _ in ref.local_exp[lab]]
        np.testing.assert_allclose([w for _, w in ours.local_exp[lab]], [w for _, w in ref.local_exp[lab]],
                                   rtol=1e-4, atol=1e-5)
        assert ours.intercept[lab] == pytest.approx(ref.intercept[lab], rel=1e-5, abs=1e-5)
    # lime keeps the score of the last label it fits: the most probable (ascending argsort)
    assert ours.score[ours.top_labels[0]] == pytest.approx(ref.score, abs=1e-5)
    # the picture: lime's get_image_and_mask with the seed's arguments
    lab = ours.top_labels[0]
    for kw in [dict(positive_only=False, hide_rest=False, num_features=11, min_weight=0.05),
               dict(positive_only=True, hide_rest=True, num_features=5, min_weight=0.0)]:
        ti, mi = ours.image_and_mask(lab, image=ref.image, **kw)
        tr, mr = ref.get_image_and_mask(lab, **kw)
        np.testing.assert_array_equal(mi, mr)
        np.testing.assert_allclose(ti, tr)


@pytest.mark.slow
@pytest.mark.parametrize("outputs", ["logits", "probabilities"])
def test_agrees_with_the_package_as_well_as_the_package_agrees_with_itself(digits, outputs):
    """Different random samples: xaiq vs lime must agree as well as lime vs lime (top-5
    superpixels overlap, weight correlation), averaged over three seed pairs."""
    model, x, y = digits
    img, lab = x[0], int(y[0])
    n = int(seg_fn(img.permute(1, 2, 0).numpy()).max()) + 1

    def agree(a, b):
        top = lambda w: set(np.argsort(-np.abs(w))[:5])  # noqa: E731
        return len(top(a) & top(b)), np.corrcoef(a, b)[0, 1]

    base, ours = [], []
    for s in range(3):
        p1 = weights(package_lime(model, img, s, 1000, outputs, labels=(lab,), top_labels=None).local_exp[lab], n)
        p2 = weights(package_lime(model, img, 100 + s, 1000, outputs, labels=(lab,), top_labels=None).local_exp[lab], n)
        o = weights(E.lime(model, img, seed=200 + s, precision="fp32", labels=[lab], segmentation_fn=seg_fn,
                           outputs=outputs).local_exp[lab], n)
        base.append(agree(p1, p2))
        ours.append(agree(o, p1))
    base, ours = np.mean(base, 0), np.mean(ours, 0)
    assert base[1] > 0.5                                # the baseline itself means something
    assert ours[0] >= base[0] - 1.0 and ours[1] >= base[1] - 0.05, (ours, base)


def test_default_segmentation_is_the_seeds_slic_from_zero():
    rng = np.random.RandomState(0)
    img = rng.rand(24, 24, 3)
    np.testing.assert_array_equal(slic_segments(img), slic(img, n_segments=100, compactness=1, sigma=1) - 1)
    grey = rng.rand(32, 32, 1) * 3 - 1                  # outside [0, 1]: scaled for SLIC
    seg = slic_segments(grey, n_segments=30)
    assert seg.shape == (32, 32) and seg.min() == 0


@pytest.mark.slow
def test_three_channels_weight_map_and_batch_size(tiny):
    model, x, y = tiny
    a = E.lime(model, x[0], num_samples=80, n_segments=25, seed=1, precision="fp32", labels=[int(y[0])], batch_size=7)
    b = E.lime(model, x[0], num_samples=80, n_segments=25, seed=1, precision="fp32", labels=[int(y[0])])
    wa, wb = a.weight_map(int(y[0])), b.weight_map(int(y[0]))
    assert wa.shape == (24, 24) and a.segments.shape == (24, 24)
    np.testing.assert_allclose(wa, wb, atol=1e-6)
    seg_w = dict(a.local_exp[int(y[0])])
    assert all(wa[r, c] == np.float32(seg_w[a.segments[r, c]]) for r, c in [(0, 0), (12, 12), (23, 5)])
    img, mask = a.image_and_mask(int(y[0]))
    assert img.shape == (24, 24, 3) and set(np.unique(mask)) <= {-1, 0, 1}
    with torch.no_grad():
        logits = model(x[:1])[0].numpy()
    np.testing.assert_allclose(a.probabilities, logits, atol=1e-4)   # default outputs: the seed's logits
    assert 0 <= a.score[int(y[0])] <= 1
    p = E.lime(model, x[0], num_samples=80, n_segments=25, seed=1, precision="fp32", labels=[int(y[0])], outputs="probabilities")
    assert np.isclose(sum(p.probabilities), 1, atol=1e-5)


@pytest.mark.slow
def test_a_stream_across_images_gives_each_image_its_own_result(digits):
    """Batches of 7 cross the images' boundaries; each image's explanation is the one it
    gets alone with the same seed (up to the float rounding a batch size brings), and the
    seed's draws are per image."""
    model, x, y = digits
    labels = [[int(t)] for t in y[:3]]
    many = E.lime_many(model, x[:3], labels, num_samples=40, n_segments=20, seed=5, precision="fp32", batch_size=7)
    for i, r in enumerate(many):
        alone = E.lime(model, x[i], num_samples=40, n_segments=20, seed=5, precision="fp32", labels=labels[i], batch_size=16)
        np.testing.assert_array_equal(r.segments, alone.segments)
        lab = labels[i][0]
        assert [s for s, _ in r.local_exp[lab]] == [s for s, _ in alone.local_exp[lab]]
        np.testing.assert_allclose([w for _, w in r.local_exp[lab]], [w for _, w in alone.local_exp[lab]],
                                   rtol=1e-5, atol=1e-5)
        assert r.intercept[lab] == pytest.approx(alone.intercept[lab], rel=1e-5, abs=1e-5)
        assert r.precision == "fp32"

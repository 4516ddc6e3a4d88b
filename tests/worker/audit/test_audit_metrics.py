"""The audit's quality metrics against their references: Quantus 0.6 (faithfulness correlation,
sparseness, complexity, max-sensitivity, MPRT) and scipy (the methods' agreement), on the
same models, images, maps and random draws. Two models the metrics were not written against:
a small 3-channel CNN with seeded random weights on crops of scikit-learn's two photos, and
the shipped digits-cnn (with batch norm) on real digits. Quantus draws from numpy's global
state: for max-sensitivity it is seeded with the seed xaiq gets, which replays the same
noise; for faithfulness correlation it is handed xaiq's subsets."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from tests.references import quantus
from worker import explain
from worker.audit import metrics
from worker.audit.sanity import cascading_randomisation

# Largest differences allowed (measured: faithfulness correlation up to 2e-6 and max-sensitivity 7e-7,
# from Quantus's float32 arithmetic; the others 1e-15).
TOL = {"correlation": 1e-5, "sensitivity": 1e-5, "maps": 1e-12, "mprt": 1e-12}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def photo_case():
    from sklearn.datasets import load_sample_images

    torch.manual_seed(11)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 12, 3, padding=1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(12 * 12 * 12, 5)).eval()
    photos = load_sample_images().images
    rng = np.random.default_rng(3)
    crops = []
    for k in range(6):
        y0, x0 = rng.integers(0, 330, 2)
        crops.append(photos[k % 2][y0:y0 + 96:4, x0:x0 + 96:4])          # 24x24
    x = ((np.stack(crops).astype(np.float32) / 255 - 0.45) / 0.25).transpose(0, 3, 1, 2).copy()
    return model, x, {"saliency": {}, "integrated_gradients": {"steps": 8}, "gradcam": {"layer": "3"}}


def digits_case():
    from safetensors.torch import load_file

    from worker.models.architectures import DigitsCNN
    from worker.models.digits import MEAN, STD, WEIGHTS, digit_images

    model = DigitsCNN()
    model.load_state_dict(load_file(WEIGHTS / "digits-cnn.safetensors"))
    images, _ = digit_images(400)
    pick = [3, 57, 120, 205, 311, 399]
    x = ((np.stack([np.asarray(images[i], np.float32) for i in pick]) / 255 - MEAN) / STD)[:, None]
    return model.eval(), x, {"saliency": {}, "integrated_gradients": {"steps": 8}, "gradcam": {"layer": "cnn.8"}}


CASES = {"photo": photo_case, "digits": digits_case}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    model, x, methods = CASES[request.param]()
    xt = torch.from_numpy(x)
    with torch.no_grad():
        y = model(xt).argmax(1)
    maps = {m: explain.run(m, model, xt, y, p).heatmaps for m, p in methods.items()}
    return {"model": model, "x": x, "y": y, "methods": methods, "maps": maps}


def explain_func(method: str, params: dict):
    """The method as Quantus calls an explain_func (its metrics re-explain through it)."""
    def run(model, inputs, targets, **_):
        return explain.run(method, model, torch.as_tensor(inputs), torch.as_tensor(targets), params).heatmaps
    return run


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "gradcam"])
@pytest.mark.parametrize("baseline, quantus_baseline",
                         [("black", "black"), ("white", "white"), ("zeros", 0.0), ("mean", "mean")])
def test_faithfulness_correlation_equals_quantus(case, method, baseline, quantus_baseline, monkeypatch):
    """Quantus draws each subset with `np.random.choice(features, subset, replace=False)`, run
    by run and image by image: it gets xaiq's subsets in that order."""
    q = quantus()
    model, x, y, h = case["model"], case["x"], case["y"], case["maps"][method]
    subsets = metrics.subset_draws(len(x), x[0].size, 40, 24, seed=17)
    ours = metrics.faithfulness_correlation(x, h, model, y, subset=40, runs=24, baseline=baseline, seed=17,
                                            batch_size=29)
    rows = iter(subsets.reshape(-1, 40))
    handed = []

    def choice(n, size, replace=True):
        assert (n, size, replace) == (x[0].size, 40, False)
        handed.append(next(rows))
        return handed[-1]

    monkeypatch.setattr(np.random, "choice", choice)
    ref = q.FaithfulnessCorrelation(nr_runs=24, subset_size=40, perturb_baseline=quantus_baseline,
                                    disable_warnings=True, return_aggregate=False)(
        model=model, x_batch=x, y_batch=y.numpy(), a_batch=h[:, None], device="cpu")
    assert len(handed) == 24 * len(x)
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL["correlation"])


def test_faithfulness_correlation_does_not_depend_on_batching(case):
    model, x, y, h = case["model"], case["x"], case["y"], case["maps"]["saliency"]
    a = metrics.faithfulness_correlation(x, h, model, y, subset=30, runs=10, seed=2, batch_size=7)
    b = metrics.faithfulness_correlation(x, h, model, y, subset=30, runs=10, seed=2, batch_size=1000)
    c = metrics.faithfulness_correlation(x, h, model, y, subset=30, runs=10, seed=3, batch_size=1000)
    np.testing.assert_allclose(a, b, atol=1e-4)      # float32 convolutions differ slightly by batch size
    assert not np.allclose(a, c)                     # another seed, other subsets
    with pytest.raises(ValueError, match="subset"):
        metrics.faithfulness_correlation(x, h, model, y, subset=x[0].size, runs=4)


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "gradcam"])
def test_sparseness_and_complexity_equal_quantus(case, method):
    q = quantus()
    x, y, h = case["x"], case["y"].numpy(), case["maps"][method].astype(np.float64)
    per_image = {"normalise_func_kwargs": {"normalise_axes": (1, 2, 3)}, "disable_warnings": True}
    kw = {"model": None, "x_batch": x, "y_batch": y}
    sparse, cx = metrics.sparseness(h), metrics.complexity(h)
    np.testing.assert_allclose(sparse, q.Sparseness(**per_image)(a_batch=h[:, None].copy(), **kw), atol=TOL["maps"])
    np.testing.assert_allclose(cx, q.Complexity(**per_image)(a_batch=h[:, None].copy(), **kw), atol=TOL["maps"])
    # Quantus's default divides by the batch's largest value: only its 1e-7 offset moves
    batch_max = q.Sparseness(disable_warnings=True)(a_batch=h[:, None].copy(), **kw)
    np.testing.assert_allclose(sparse, batch_max, atol=1e-5)       # measured: up to 3e-6
    np.testing.assert_allclose(cx, q.Complexity(disable_warnings=True)(a_batch=h[:, None].copy(), **kw),
                               atol=TOL["maps"])


def test_sparseness_and_complexity_extremes():
    one_pixel = np.zeros((1, 8, 8))
    one_pixel[0, 3, 4] = 5.0
    uniform = np.full((1, 8, 8), -2.0)                 # |map| counts
    assert metrics.sparseness(one_pixel)[0] == pytest.approx(1 - 1 / 64, abs=1e-5)
    assert metrics.sparseness(uniform)[0] == pytest.approx(0.0, abs=1e-12)
    assert metrics.complexity(one_pixel)[0] == pytest.approx(0.0, abs=1e-9)
    assert metrics.complexity(uniform)[0] == pytest.approx(np.log(64), abs=1e-9)
    assert np.isnan(metrics.complexity(np.zeros((1, 8, 8)))[0])


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "gradcam"])
def test_max_sensitivity_equals_quantus(case, method):
    q = quantus()
    model, x, y, h = case["model"], case["x"], case["y"], case["maps"][method]
    params = case["methods"][method]
    batched = []

    def ours_explain(xs, ys):
        batched.append(len(xs))
        return explain.run(method, model, xs, ys, params).heatmaps

    ours = metrics.max_sensitivity(ours_explain, torch.from_numpy(x), y, h, perturbations=5, radius=0.3, seed=23)
    assert batched == [5 * len(x)]                 # every perturbed copy in one call
    np.random.seed(23)
    ref = q.MaxSensitivity(nr_samples=5, lower_bound=0.3, disable_warnings=True)(
        model=model, x_batch=x, y_batch=y.numpy(), a_batch=h[:, None], explain_func=explain_func(method, params),
        device="cpu")
    assert np.isfinite(ours).all() and (ours > 0).all()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL["sensitivity"])


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients"])
def test_mprt_equals_quantus(case, method):
    """Per stage, the mean of Quantus's per-image correlations. digits-cnn has batch norm,
    which Quantus re-initialises too: skip_norm=False takes the same layers. The maps go to
    Quantus in float64: it divides them by their maximum before ranking, which in float32 can
    merge two nearly equal values into a tie (measured: 3.5e-7 on one stage)."""
    q = quantus()
    model, x, y = case["model"], case["x"], case["y"]
    params = case["methods"][method]
    fn32 = explain_func(method, params)

    def fn(*args, **kw):
        return fn32(*args, **kw).astype(np.float64)
    ours = cascading_randomisation(model, torch.from_numpy(x), y, lambda m, xs, ys: fn(m, xs, ys),
                                   seed=9, skip_norm=False)
    ref = q.MPRT(seed=8, disable_warnings=True)(model=model, x_batch=x, y_batch=y.numpy(), a_batch=None,
                                                explain_func=fn, device="cpu")
    assert [s["layer"] for s in ours["stages"]] == list(ref)
    for stage in ours["stages"]:
        assert stage["spearman_mean"] == pytest.approx(np.mean(ref[stage["layer"]]), abs=TOL["mprt"])
        assert stage["spearman_std"] == pytest.approx(np.std(ref[stage["layer"]]), abs=TOL["mprt"])
    assert ours["metric"] == "MPRT" and ours["absolute"]


def test_agreement_equals_scipy_spearman(case):
    maps = dict(case["maps"])
    maps["flat"] = np.where(np.arange(len(case["x"]))[:, None, None] == 0, 1.0, maps["saliency"])  # image 0 constant
    got = metrics.agreement(maps)
    assert list(got) == [("saliency", "integrated_gradients"), ("saliency", "gradcam"), ("saliency", "flat"),
                         ("integrated_gradients", "gradcam"), ("integrated_gradients", "flat"), ("gradcam", "flat")]
    for (a, b), rho in got.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")              # scipy warns on the constant map (NaN)
            want = [spearmanr(maps[a][i].ravel(), maps[b][i].ravel())[0] for i in range(len(rho))]
        np.testing.assert_allclose(rho, want, atol=1e-12, equal_nan=True)
    assert np.isnan(got[("saliency", "flat")][0]) and got[("saliency", "flat")][1] == pytest.approx(1.0)
    ties = np.round(maps["gradcam"] * 4)                              # many tied pixels: average ranks
    rho = metrics.spearman_rows(ties, maps["saliency"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = [spearmanr(t.ravel(), s.ravel())[0] for t, s in zip(ties, maps["saliency"])]
    np.testing.assert_allclose(rho, want, atol=1e-12, equal_nan=True)


import numpy as np
import pytest
import torch

from worker.audit.faithfulness import auc, deletion_insertion, gaussian_blur, predict_fn


def test_auc_of_constant_and_linear_curves():
    assert auc(np.full(17, 0.7)) == pytest.approx(0.7)
    assert auc(np.linspace(1, 0, 33)) == pytest.approx(0.5)
    np.testing.assert_allclose(auc(np.array([[1.0, 1.0], [0.0, 1.0]])), [1.0, 0.5])


def region_model():
    """Class 0 logit = 8 * mean of the top-left 4x4 region, class 1 logit = 2: the
    model looks only at that region."""
    def predict(x):
        z0 = 8 * x[:, :, :4, :4].mean(dim=(1, 2, 3))
        return torch.softmax(torch.stack([z0, torch.full_like(z0, 2.0)], 1), 1)
    return predict


def region_batch(n=6, h=12, w=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, h, w, generator=g) * 0.3
    x[:, :, :4, :4] = 1.0
    perfect = np.zeros((n, h, w), np.float32)
    perfect[:, :4, :4] = 1.0
    return x, perfect


def test_perfect_attribution_beats_random():
    x, perfect = region_batch()
    out = deletion_insertion(x, perfect, region_model(), np.zeros(len(x), int), steps=20,
                             insertion_baseline="zeros", return_curves=True)
    assert set(out) >= {"deletion", "insertion", "deletion_random", "insertion_random", "curves"}
    assert all(out[k].shape == (len(x),) for k in ("deletion", "insertion"))
    assert (out["deletion"] < out["deletion_random"] - 0.1).all()
    assert (out["insertion"] > out["insertion_random"] + 0.1).all()
    curves = out["curves"]
    assert curves.shape == (4, len(x), 21)
    p_full = region_model()(x)[:, 0].numpy()
    np.testing.assert_allclose(curves[0, :, 0], p_full, rtol=1e-5)           # nothing deleted yet
    np.testing.assert_allclose(curves[1, :, -1], p_full, rtol=1e-5)          # everything inserted
    np.testing.assert_allclose(curves[0, :, -1], curves[2, :, -1], rtol=1e-5)  # all deleted = baseline


def test_inverted_attribution_is_worse_than_random():
    x, perfect = region_batch()
    out = deletion_insertion(x, 1 - perfect, region_model(), np.zeros(len(x), int), insertion_baseline="zeros")
    assert (out["deletion"] > out["deletion_random"]).all()
    assert (out["insertion"] < out["insertion_random"]).all()


def test_batching_does_not_change_results_and_seed_is_deterministic():
    x, perfect = region_batch(n=5)
    hm = perfect + np.random.default_rng(0).random(perfect.shape).astype(np.float32)
    a = deletion_insertion(x, hm, region_model(), None, steps=8, batch_size=7, seed=3)
    b = deletion_insertion(x, hm, region_model(), None, steps=8, batch_size=10_000, seed=3)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6)


def test_constant_model_gives_constant_auc():
    x, perfect = region_batch(n=3)
    out = deletion_insertion(x, perfect, lambda b: torch.full((len(b), 2), 0.5), [0, 1, 0], steps=4)
    for k in out:
        np.testing.assert_allclose(out[k], 0.5, rtol=1e-6)


def test_blur_baseline_and_predict_fn():
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 1
    y = gaussian_blur(x, 1.0)
    assert y.sum().item() == pytest.approx(1.0, rel=1e-4) and y.max() < 0.5
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(81, 3))
    p = predict_fn(model)(x)
    assert p.shape == (1, 3) and p.sum().item() == pytest.approx(1.0)

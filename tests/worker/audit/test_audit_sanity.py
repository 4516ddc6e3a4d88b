import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from worker.audit.sanity import cascading_randomisation, randomisable_layers, spearman_rows


def test_spearman_rows_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.random((4, 5, 6)), rng.random((4, 5, 6))
    b[1] = a[1] ** 2          # monotone: rho = 1
    got = spearman_rows(a, b)
    want = [spearmanr(a[i].ravel(), b[i].ravel())[0] for i in range(4)]
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert got[1] == 1.0
    assert spearman_rows(np.ones((1, 4)), np.arange(4)[None])[0] == 0.0   # constant map


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 64, 3)).eval()


def gradient(model, x, y):
    x = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
    return x.grad.abs().sum(1)


@pytest.mark.slow
def test_layers_top_down_and_gradient_changes():
    model = small_model()
    assert randomisable_layers(model) == ["0", "3", "6"]               # BatchNorm skipped
    x = torch.randn(8, 1, 8, 8)
    y = torch.randint(0, 3, (8,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = cascading_randomisation(model, x, y, gradient, method="gradient")
    assert [s["layer"] for s in res["stages"]] == ["original", "6", "3", "0"]
    assert res["stages"][0]["spearman_mean"] == 1.0
    assert res["final_spearman"] < 0.5 and res["passed"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # original untouched


def test_model_independent_map_fails():
    model = small_model()
    x = torch.randn(8, 1, 8, 8)
    res = cascading_randomisation(model, x, torch.zeros(8, dtype=torch.long),
                                  lambda m, x, y: x.abs().sum(1), method="edges", max_stages=2)
    assert len(res["stages"]) == 3
    assert res["final_spearman"] == 1.0 and not res["passed"]

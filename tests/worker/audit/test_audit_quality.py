"""The quality metrics inside an audit: per unit (`unit_partial`), streamed through the
partials (per-class mean and spread without per-image values), in report.json/html and in
the items' fields; their options and their share of the cost estimate."""
from __future__ import annotations

import json

import numpy as np
import pydantic
import pytest
import torch
from torch import nn

from worker import explain
from worker.audit import QualityParams, finalize, unit_partial
from worker.audit.aggregate import Partial, merge, summarise
from worker.audit.faithfulness import predict_fn
from worker.audit.job import quality_fields
from worker.audit.metrics import QUALITY_KEYS, max_sensitivity, sensitivity_sample, unit_quality
from worker.audit.report import render_html, validate_report

K = 3
METHODS = {"saliency": {}, "gradcam": {"layer": "2"}}


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(96, K)).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 1, 12, 12, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    maps = {m: explain.run(m, model, x, y, p).heatmaps for m, p in METHODS.items()}
    labels = np.arange(20) % K
    return model, x, y, maps, labels


def explainers(model):
    return {m: (lambda xs, ys, m=m: explain.run(m, model, xs, ys, METHODS[m]).heatmaps) for m in METHODS}


SMALL = QualityParams(correlation_runs=6, correlation_subset=20, sensitivity_perturbations=3)


def one_unit(setup, sl: slice) -> Partial:
    model, x, _, maps, labels = setup
    idx = np.arange(20)[sl]
    return unit_partial(x[sl], labels[sl], idx, {m: h[sl] for m, h in maps.items()},
                        predict_fn(model), n_classes=K, steps=4, seed=1, quality=SMALL,
                        logits=model, explainers=explainers(model), sensitive=np.isin(idx, [0, 7, 13]))


@pytest.mark.slow
def test_unit_quality_computes_what_it_is_given(setup):
    model, x, y, maps, _ = setup
    params = QualityParams(correlation_runs=5, correlation_subset=10, sensitivity_perturbations=2)
    mask = np.zeros(20, bool)
    mask[[2, 9]] = True
    scores, agree = unit_quality(x, maps, y, params=params, seed=4, logits=model, explainers=explainers(model),
                                 sensitive=mask)
    assert set(scores) == set(METHODS) and all(set(v) == set(QUALITY_KEYS) for v in scores.values())
    for m, v in scores.items():
        assert np.isfinite(v["faithfulness_correlation"]).all() and np.isfinite(v["sparseness"]).all()
        assert np.isfinite(v["max_sensitivity"][mask]).all() and np.isnan(v["max_sensitivity"][~mask]).all()
        alone = max_sensitivity(explainers(model)[m], x[mask], y[mask], maps[m][mask], perturbations=2, seed=4)
        np.testing.assert_allclose(v["max_sensitivity"][mask], alone, atol=1e-6)   # the sample on its own
    assert list(agree) == [("saliency", "gradcam")] and agree[("saliency", "gradcam")].shape == (20,)
    with torch.inference_mode():      # as the service runs a unit's audit passes: the re-explanations still work
        inside, _ = unit_quality(x, maps, y, params=params, seed=4, logits=model, explainers=explainers(model),
                                 sensitive=mask)
    np.testing.assert_allclose(inside["gradcam"]["max_sensitivity"], scores["gradcam"]["max_sensitivity"], atol=1e-6)
    bare, _ = unit_quality(x, maps, y, params=QualityParams(correlation_runs=0))
    for m, v in bare.items():    # no logits, no explainers: the maps-only metrics alone
        assert np.isnan(v["faithfulness_correlation"]).all() and np.isnan(v["max_sensitivity"]).all()
        np.testing.assert_allclose(v["sparseness"], scores[m]["sparseness"])


@pytest.mark.slow
def test_partials_stream_mean_and_spread_per_class(setup):
    labels = setup[4]
    units = [one_unit(setup, slice(a, b)) for a, b in ((0, 8), (8, 14), (14, 20))]
    per_image = {m: {k: np.concatenate([u.unit_quality[m][k] for u in units]) for k in QUALITY_KEYS} for m in METHODS}
    agree = np.concatenate([u.unit_agreement[("saliency", "gradcam")] for u in units])
    blobs = [u.to_bytes() for u in units]
    assert all(b"unit_quality" not in b for b in blobs)
    merged = merge(iter(blobs))
    assert merged.unit_quality == {} and merged.quality["saliency"].shape == (K, len(QUALITY_KEYS), 3)
    summary = summarise(merged)
    for m in METHODS:
        for key in QUALITY_KEYS:
            got, v = summary["per_method"][m]["quality"][key], per_image[m][key]
            ok = np.isfinite(v)
            assert got["overall"]["n"] == ok.sum()
            assert got["overall"]["mean"] == pytest.approx(v[ok].mean(), abs=1e-12)
            assert got["overall"]["std"] == pytest.approx(v[ok].std(), abs=1e-9)
            for c in range(K):
                vc = v[ok & (labels == c)]
                st = got["per_class"][c]
                assert st["n"] == len(vc)
                if len(vc):
                    assert st["mean"] == pytest.approx(vc.mean(), abs=1e-12)
                else:
                    assert st["mean"] is None and st["std"] is None
    assert summary["per_method"]["saliency"]["quality"]["max_sensitivity"]["overall"]["n"] == 3   # the sample
    [pair] = summary["agreement"]
    assert pair["methods"] == ["saliency", "gradcam"]
    assert pair["overall"]["mean"] == pytest.approx(np.nanmean(agree), abs=1e-12)
    assert [s["n"] for s in pair["per_class"]] == [int(np.isfinite(agree[labels == c]).sum()) for c in range(K)]


@pytest.mark.slow
def test_report_and_item_fields(setup):
    units = [one_unit(setup, slice(0, 10)), one_unit(setup, slice(10, 20))]
    fields = quality_fields(units[0], 0)
    assert json.loads(json.dumps(fields, allow_nan=False)) == fields
    assert set(fields["quality"]) == set(METHODS) and fields["quality"]["saliency"]["max_sensitivity"] is not None
    assert fields["quality"]["saliency"]["max_sensitivity"] == pytest.approx(
        units[0].unit_quality["saliency"]["max_sensitivity"][0], abs=1e-5)
    assert quality_fields(units[0], 1)["quality"]["gradcam"]["max_sensitivity"] is None   # not in the sample
    assert fields["agreement"][0]["methods"] == ["saliency", "gradcam"]
    report, page = finalize([u.to_bytes() for u in units], shortcuts=False)
    validate_report(report)
    assert set(report["per_method"]["gradcam"]["quality"]) == set(QUALITY_KEYS)
    assert report["agreement"][0]["overall"]["n"] > 0
    assert "Explanation quality" in page and 'alt="explanation quality"' in page
    assert 'alt="agreement between methods"' in page and "MPRT" in page
    with pytest.raises(pydantic.ValidationError):
        validate_report({**report, "agreement": [{**report["agreement"][0], "methods": ["saliency"]}]})
    one = dict(report, methods=["saliency"], agreement=[])
    assert "nothing to compare" in render_html(one)


def test_sensitivity_sample_spreads_over_the_dataset():
    assert sensitivity_sample(100, 5).tolist() == [0, 25, 50, 74, 99]
    assert sensitivity_sample(3, 8).tolist() == [0, 1, 2]
    assert sensitivity_sample(50, 0).size == 0


def test_audit_options_and_their_cost():
    from api import intake
    from shared.schemas import AuditOptions

    d = AuditOptions().model_dump()
    assert d["correlation_runs"] == 32 and d["correlation_baseline"] == "black" and d["sensitivity_sample"] == 8
    for bad in ({"correlation_runs": 1}, {"correlation_runs": -1}, {"correlation_baseline": "uniform"},
                {"sensitivity_radius": 0}, {"sensitivity_perturbations": 0}, {"sensitivity_sample": 513}):
        with pytest.raises(pydantic.ValidationError):
            AuditOptions(**bad)
    methods, info = {"saliency": {}, "integrated_gradients": {"steps": 10}}, {"gflops": 1.0, "layers": []}
    off = dict(d, correlation_runs=0, sensitivity_sample=0)
    base = intake.estimate(methods, info, 100, 4, off)
    # one pass per run and image and method, plus the unperturbed one
    assert intake.estimate(methods, info, 100, 4, dict(off, correlation_runs=32)) - base == 100 * 2 * 33
    # every noisy copy is explained again: saliency 3 passes, integrated gradients 3 x steps
    assert intake.estimate(methods, info, 100, 4, dict(off, sensitivity_sample=8, sensitivity_perturbations=10)) \
        - base == 8 * 10 * (3 + 30)

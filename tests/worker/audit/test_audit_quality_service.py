"""The quality metrics through the service: an audit of 60 digits with two methods (real
Redis, S3 server, Celery worker) reports them per method and class, the agreement of the
two methods, MPRT, and each image's values in its item."""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from worker.models.digits import digit_images

N, SAMPLE = 60, 5


def digits_zip(n: int) -> bytes:
    images, labels = digit_images(n)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i, (img, label) in enumerate(zip(images, labels)):
            png = io.BytesIO()
            img.save(png, "PNG")
            z.writestr(f"digits/{label}/{i:04d}.png", png.getvalue())
    return buf.getvalue()


@pytest.fixture(scope="module")
def audit(client, digits_model):
    spec = {"model": "digits-cnn", "methods": {"saliency": {}, "gradcam": {"layer": "cnn.8"}}, "unit_size": 16,
            "options": {"faithfulness_steps": 4, "sanity_sample": 4, "correlation_runs": 8, "correlation_subset": 64,
                        "sensitivity_sample": SAMPLE, "sensitivity_perturbations": 3}}
    r = client.session.post(f"{client.server}/v1/audits", files={"dataset": ("d.zip", digits_zip(N))},
                            data={"spec": json.dumps(spec)})
    assert r.status_code == 202, r.text
    state = client.wait(r.json()["id"], timeout=600, poll=0.5, path="/v1/audits")
    assert state["status"] == "succeeded", state
    return state, client.report(state["id"])["report"], list(client.results(state["id"], per_page=100))


def test_report_has_the_metrics_per_method_and_class(audit):
    _, report, _ = audit
    for m in ("saliency", "gradcam"):
        q = report["per_method"][m]["quality"]
        for key in ("faithfulness_correlation", "sparseness", "complexity"):
            assert q[key]["overall"]["n"] == N, (m, key)
            assert sum(c["n"] for c in q[key]["per_class"]) == N
        assert q["max_sensitivity"]["overall"]["n"] == SAMPLE                # the sample only
        assert 0 < q["sparseness"]["overall"]["mean"] < 1
        assert -1 <= q["faithfulness_correlation"]["overall"]["mean"] <= 1
        assert q["max_sensitivity"]["overall"]["mean"] > 0
    [pair] = report["agreement"]
    assert pair["methods"] == ["saliency", "gradcam"] and pair["overall"]["n"] == N
    assert {s["metric"] for s in report["sanity"]} == {"MPRT"}


def test_items_carry_each_images_values(audit):
    _, report, items = audit
    assert len(items) == N
    sampled = [it for it in items if it["quality"]["saliency"]["max_sensitivity"] is not None]
    assert sorted(it["index"] for it in sampled) == [0, 15, 30, 44, 59]      # spread over the dataset
    values = np.array([it["quality"]["gradcam"]["sparseness"] for it in items])
    assert values.mean() == pytest.approx(report["per_method"]["gradcam"]["quality"]["sparseness"]["overall"]["mean"],
                                          abs=1e-4)
    rho = [it["agreement"][0]["spearman"] for it in items]
    assert all(it["agreement"][0]["methods"] == ["saliency", "gradcam"] for it in items)
    assert np.mean(rho) == pytest.approx(report["agreement"][0]["overall"]["mean"], abs=1e-4)


@pytest.mark.parametrize("options, words", [({"correlation_runs": 1}, "at least 2 runs"),
                                            ({"correlation_baseline": "uniform"}, "correlation_baseline"),
                                            ({"sensitivity_radius": -1}, "sensitivity_radius"),
                                            ({"sensitivity_sample": 10_000}, "sensitivity_sample")])
def test_bad_metric_options_are_refused_before_anything_runs(http, digits_model, options, words):
    r = http.post("/v1/audits", json={"model": "digits-cnn", "dataset": "datasets/none", "options": options})
    assert r.status_code == 422, r.get_json()
    assert words in json.dumps(r.get_json()["error"])

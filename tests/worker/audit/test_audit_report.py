import base64
import json
import re
from pathlib import Path

import numpy as np
import pydantic
import pytest

from worker.audit.aggregate import FAITH_KEYS, Partial
from worker.audit import ShortcutParams, finalize
from worker.audit.report import json_schema, render_html, validate_report

REPORT_MD = Path(__file__).resolve().parents[3] / "worker" / "audit" / "REPORT.md"


def box_model(x):
    """Class 2 when the top-left 3x3 box is bright, else the class from the image's mean."""
    box = x[:, 0, :3, :3].mean((1, 2))
    rest = x[:, 0].mean((1, 2))
    logits = np.stack([8 * (0.5 - rest), 8 * (rest - 0.5), 40 * (box - 0.8)], 1)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def make_report(with_flag=True):
    """A 3-class audit of 16x16 images where class 2 carries a bright box (if `with_flag`),
    the model reads it, and the saliency-like maps peak there."""
    rng = np.random.default_rng(0)
    n, k = 60, 3
    labels = np.repeat(np.arange(k), n // k)
    x = (0.3 + 0.4 * (labels == 1)[:, None, None, None] + 0.1 * rng.random((n, 1, 16, 16))).astype(np.float32)
    maps = rng.random((n, 16, 16)).astype(np.float32)
    if with_flag:
        x[labels == 2, :, :3, :3] = 1.0
        maps[labels == 2, :3, :3] += 5
    probs = box_model(x)
    faith = {k_: rng.random(n) for k_ in FAITH_KEYS}
    p = Partial.from_batch(np.arange(n), labels, probs, {"saliency": maps}, n_classes=k,
                           faithfulness={"saliency": faith}, thumb_size=8)
    sanity = [{"method": "saliency", "n_images": 4, "stages": [
        {"layer": "original", "spearman_mean": 1.0, "spearman_std": 0.0},
        {"layer": "fc", "spearman_mean": 0.3, "spearman_std": 0.1}],
        "final_spearman": 0.3, "pass_threshold": 0.5, "passed": True}]
    report, html = finalize([p.to_bytes()], class_names=["cat", "dog", "<b>x</b>"], sanity=sanity,
                            meta={"job": "j1"}, predict=box_model, sample=lambda idx: (x[idx], list(idx)),
                            shortcuts=ShortcutParams(images=16, candidates=4))
    return report, html


def test_report_json_follows_schema():
    report, _ = make_report()
    assert json.loads(json.dumps(report)) == report                       # plain JSON
    validate_report(report)
    assert [f["class"] for f in report["flags"]] == [2]
    f = report["flags"][0]
    assert f["kind"] == "shortcut" and set(f["evidence"]) >= {"region", "image_indices", "scores", "removal", "paste"}
    assert f["evidence"]["region"]["pixels"][:2] == [0, 0] and f["evidence"]["region"]["pixels"][2] <= 6
    removal = f["evidence"]["removal"]
    assert removal["low"] <= removal["accuracy_effect"] <= removal["high"] and removal["low"] > 0.5
    sc = report["shortcuts"]
    assert sc["run"] and sc["tests"] == 2 * sc["candidates"] and sc["confidence"] == pytest.approx(
        1 - 0.05 / sc["tests"], abs=1e-6)
    assert sc["near_misses"] and all(n["kind"] == "near_miss" and "paste" in n["evidence"] for n in sc["near_misses"])
    for key in ("flags", "accuracy", "confusion", "per_method"):
        bad = {k: v for k, v in report.items() if k != key}
        with pytest.raises(pydantic.ValidationError):
            validate_report(bad)
    with pytest.raises(pydantic.ValidationError):
        validate_report({**report, "flags": [{**f, "kind": "bias"}]})
    assert "flags" in json_schema()["required"]


def test_schema_is_documented():
    text = REPORT_MD.read_text()
    for key in json_schema()["properties"]:
        assert f"`{key}`" in text, key


@pytest.mark.slow
def test_html_is_self_contained_and_shows_the_evidence():
    report, html = make_report()
    assert html.startswith("<!doctype html>") and "<style>" in html
    srcs = re.findall(r'src="([^"]+)"', html)
    assert len(srcs) == 5 and all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:
        assert base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html     # names are escaped
    assert 'alt="region, images with and without it, and with it pasted in"' in html
    low = report["flags"][0]["evidence"]["removal"]["low"]
    assert f"[{low:+.2f}," in html and "Near-misses" in html            # the interval and the near-misses


@pytest.mark.slow
def test_html_without_flags_or_sanity():
    report, _ = make_report(with_flag=False)
    report["sanity"] = []
    assert report["flags"] == []
    html = render_html(report)
    assert "No candidate region" in html and html.count("data:image/png;base64,") == 3

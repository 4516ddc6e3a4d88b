import base64
import json
import re
from pathlib import Path

import numpy as np
import pydantic
import pytest

from worker.audit.aggregate import FAITH_KEYS, Partial, merge, summarise
from worker.audit.report import build_report, example_indices, json_schema, render_html, validate_report
from worker.audit.shortcuts import detect_shortcuts

REPORT_MD = Path(__file__).resolve().parents[3] / "worker" / "audit" / "REPORT.md"


def make_report(with_flag=True):
    rng = np.random.default_rng(0)
    n, k = 60, 3
    labels = np.repeat(np.arange(k), n // k)
    probs = np.eye(k)[labels] * 0.8 + 0.2 / k
    maps = rng.random((n, 16, 16)).astype(np.float32)
    if with_flag:
        maps[labels == 2, :3, :3] += 5
    faith = {k_: rng.random(n) for k_ in FAITH_KEYS}
    p = Partial.from_batch(np.arange(n), labels, probs, {"saliency": maps}, n_classes=k,
                           faithfulness={"saliency": faith}, thumb_size=8)
    merged = merge([p.to_bytes()])
    summary = summarise(merged, ["cat", "dog", "<b>x</b>"])
    flags = detect_shortcuts(merged.thumbs["saliency"], merged.labels, merged.indices,
                             input_size=(16, 16), method="saliency", class_names=summary["classes"])
    sanity = [{"method": "saliency", "n_images": 4, "stages": [
        {"layer": "original", "spearman_mean": 1.0, "spearman_std": 0.0},
        {"layer": "fc", "spearman_mean": 0.3, "spearman_std": 0.1}],
        "final_spearman": 0.3, "pass_threshold": 0.5, "passed": True}]
    return build_report(summary, flags, sanity, meta={"job": "j1"}), maps


def test_report_json_follows_schema():
    report, _ = make_report()
    assert json.loads(json.dumps(report)) == report                       # plain JSON
    validate_report(report)
    assert [f["class"] for f in report["flags"]] == [2]
    f = report["flags"][0]
    assert f["kind"] == "shortcut" and set(f["evidence"]) >= {"region", "image_indices", "scores"}
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
def test_html_is_self_contained():
    report, maps = make_report()
    idx = example_indices(report["flags"], per_flag=4)
    assert len(idx) == 4
    html = render_html(report, {i: maps[i] / maps[i].max() for i in idx})
    assert html.startswith("<!doctype html>") and "<style>" in html
    srcs = re.findall(r'src="([^"]+)"', html)
    assert len(srcs) == 5 and all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:
        assert base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html     # names are escaped


@pytest.mark.slow
def test_html_without_flags_or_sanity():
    report, _ = make_report(with_flag=False)
    report["sanity"] = []
    assert report["flags"] == []
    html = render_html(report)
    assert "No class" in html and html.count("data:image/png;base64,") == 3

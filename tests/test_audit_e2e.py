"""Audits through the service: zip upload and bucket prefix, report.json/html, and the
planted shortcut found end to end (a model trained on digits whose 3s carry a patch)."""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import requests
from PIL import Image

from tests.planted import CLASS, dataset, patch_overlap, trained
from worker.models.digits import digit_images


def weights(planted: bool) -> bytes:
    from safetensors.torch import save

    return save(trained(planted).state_dict())


def zip_of(x: np.ndarray, y: np.ndarray, classes: list[str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i, (img, label) in enumerate(zip(x, y)):
            png = io.BytesIO()
            Image.fromarray(img, mode="L").save(png, "PNG")
            z.writestr(f"digits/{classes[label]}/{i:04d}.png", png.getvalue())
    return buf.getvalue()


def register(client, name: str, weights: bytes) -> None:
    from worker.models import digits

    info = client.register_model({**digits.manifest(), "name": name}, weights, replace=True)
    assert info["status"] == "ready"


def run_audit(client, name: str, data: bytes, **spec) -> tuple[dict, dict]:
    r = client.session.post(f"{client.server}/v1/audits", files={"dataset": ("d.zip", data)},
                            data={"spec": json.dumps({"model": name, **spec})})
    assert r.status_code == 202, r.text
    audit = r.json()["id"]
    state = client.wait(audit, timeout=600, poll=0.5, path="/v1/audits")
    assert state["status"] == "succeeded", state
    return state, client.report(audit)


@pytest.fixture(scope="module")
def planted_audits(client, digits_model):
    out = {}
    for planted in (True, False):
        x, y = dataset(planted)
        name = f"digits-{'planted' if planted else 'clean'}"
        register(client, name, weights(planted))
        out[planted] = run_audit(client, name, zip_of(x, y, [str(c) for c in range(10)]),
                                 options={"faithfulness_steps": 8, "sanity_sample": 8}, unit_size=64)
    return out


def test_planted_shortcut_is_flagged_with_its_class_and_region(planted_audits):
    state, rep = planted_audits[True]
    report = rep["report"]
    assert state["progress"] == {"total": 1797, "done": 1797, "failed": 0}
    assert report["n_images"] == 1797 and report["accuracy"] > 0.9
    assert report["flags"], "the planted patch must be flagged"
    assert {f["class"] for f in report["flags"]} == {CLASS}
    for flag in report["flags"]:
        assert flag["kind"] == "shortcut"
        assert patch_overlap(flag["evidence"]["region"]["pixels"]) >= 0.5, flag["evidence"]["region"]
        assert len(flag["evidence"]["image_indices"]) >= 8
        assert flag["evidence"]["removal"]["low"] > 0.5                     # the class needs the patch
    sc = report["shortcuts"]
    assert sc["run"] and sc["forward_passes"] > 0 and sc["tests"] == 2 * sc["candidates"]


def test_no_flag_without_the_patch(planted_audits):
    _, rep = planted_audits[False]
    assert rep["report"]["flags"] == []
    assert rep["report"]["shortcuts"]["near_misses"]                       # tested, with their scores


def test_report_contents_and_html(planted_audits, client):
    state, rep = planted_audits[False]
    report = rep["report"]
    assert np.asarray(report["confusion"]).sum() == 1797
    assert len(report["per_class"]) == 10
    assert report["sanity"] and report["sanity"][0]["stages"][0]["layer"] == "original"
    overall = report["per_method"]["saliency"]["faithfulness"]["overall"]
    assert overall["n"] == 1797 and overall["deletion"] < overall["deletion_random"]
    html = requests.get(rep["html"], timeout=30)
    assert html.ok and "data:image/png;base64," in html.text and "<html" in html.text.lower()
    items = list(client.results(state["id"], per_page=500))
    assert len(items) == 1797
    assert all("correct" in it and "faithfulness" in it for it in items[:50])


def test_audit_of_a_folder_of_uploads_and_errors(client, digits_model, http):
    images, labels = digit_images(40)
    for label in sorted(set(labels)):
        pngs = []
        for i in [j for j, lab in enumerate(labels) if lab == label]:
            buf = io.BytesIO()
            images[i].save(buf, "PNG")
            pngs.append((f"{i}.png", buf.getvalue()))
        client.upload(pngs, folder=f"datasets/prefix-test/{label}")
    r = client.session.post(f"{client.server}/v1/audits", json={"model": "digits-cnn", "dataset": "datasets/prefix-test",
                                                                 "options": {"sanity_sample": 4}})
    assert r.status_code == 202, r.text
    audit = r.json()["id"]
    early = client.session.get(f"{client.server}/v1/audits/{audit}/report")
    assert early.status_code == 409, early.text   # the report is written after every image
    state = client.wait(audit, timeout=300, path="/v1/audits")
    assert state["status"] == "succeeded" and state["progress"]["done"] == 40
    assert client.report(audit)["report"]["n_images"] == 40

    bad = [
        (http.post("/v1/audits", json={"model": "digits-cnn", "dataset": "nowhere/"}), 422, "no images"),
        (http.post("/v1/audits", json={"model": "digits-cnn", "dataset": "../tenants"}), 422, "a folder of your uploads"),
        (http.post("/v1/audits", json={"model": "digits-cnn", "methods": {"filters": {"layer": "cnn.0"}}}), 422,
         "gives no attribution"),
        (http.post("/v1/audits", json={"model": "digits-cnn"}), 400, "dataset"),
        (http.post("/v1/audits", content_type="multipart/form-data",
                   data={"spec": '{"model": "digits-cnn"}', "dataset": (io.BytesIO(b"not a zip"), "d.zip")}), 400,
         "not a readable zip"),
        (http.post("/v1/audits", content_type="multipart/form-data",
                   data={"spec": '{"model": "digits-cnn"}',
                         "dataset": (io.BytesIO(zip_of(np.zeros((1, 8, 8), np.uint8), np.array([0]), ["cat"])),
                                     "d.zip")}), 422, "names no class"),
        (http.get("/v1/audits/" + "0" * 32), 404, "unknown"),
        (http.post("/v1/audits", json={"model": "digits-cnn", "dataset": "datasets/prefix-test",
                                       "options": {"shortcut_fill": "noise"}}), 422, "shortcut_fill"),
        (http.post("/v1/audits", json={"model": "digits-cnn", "dataset": "datasets/prefix-test",
                                       "options": {"shortcut_alpha": 2}}), 422, "shortcut_alpha"),
    ]
    for resp, code, words in bad:
        assert resp.status_code == code, resp.get_json()
        assert words in resp.get_json()["error"]["message"]

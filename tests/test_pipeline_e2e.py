"""A bulk job through HTTP -> Redis -> a real Celery worker -> S3, checked against Captum."""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import requests
import torch
from PIL import Image

from tests.conftest import to_model_input, wait_final


def reference_saliency(model, x: torch.Tensor) -> np.ndarray:
    """Captum's Saliency on log_softmax (= |d CE / d x|), min-max normalised per image (the seed's)."""
    from captum.attr import Saliency

    target = model(x).argmax(1)
    attr = Saliency(lambda t: torch.log_softmax(model(t), 1)).attribute(x.clone().requires_grad_(), target=target,
                                                                        abs=True).detach().numpy()
    lo = attr.reshape(len(attr), -1).min(1)[:, None, None, None]
    hi = attr.reshape(len(attr), -1).max(1)[:, None, None, None]
    return (attr - lo) / (hi - lo)


def test_bulk_saliency_job_of_64_images_matches_captum(client, admin, digits_model, digit_pngs, digits_torch):
    pngs, labels = digit_pngs
    t0 = time.monotonic()
    job = client.submit(pngs, model="digits-cnn", methods={"saliency": {}})
    state = wait_final(client, job)
    elapsed = time.monotonic() - t0
    print(f"64-image saliency job end to end: {elapsed:.2f} s")
    assert state["status"] == "succeeded", state
    assert state["progress"] == {"total": 64, "done": 64, "failed": 0}
    assert state["started"] and state["finished"] >= state["started"]

    items = list(client.results(job, per_page=25))  # three pages
    assert [it["index"] for it in items] == list(range(64))
    x = torch.tensor(np.stack([to_model_input(png) for _, png in pngs]))
    ref = reference_saliency(digits_torch, x)
    with torch.no_grad():
        pred = digits_torch(x).argmax(1).numpy()
    for it in items:
        i = it["index"]
        assert it["status"] == "done" and it["name"] == pngs[i][0]
        assert it["prediction"]["label"] == pred[i] == it["target"]
        assert abs(sum(it["prediction"]["probabilities"].values()) - 1) < 1e-3
        npy = np.load(io.BytesIO(requests.get(it["methods"]["saliency"]["npy"], timeout=30).content))
        assert npy.dtype == np.float32 and npy.shape == (1, 32, 32)
        np.testing.assert_allclose(npy, ref[i], atol=1e-5)
        png = Image.open(io.BytesIO(requests.get(it["methods"]["saliency"]["png"], timeout=30).content))
        assert png.size == Image.open(io.BytesIO(pngs[i][1])).size
    assert (pred == labels).mean() > 0.9  # the shipped model is right on real digits
    for it in items:   # each unit says how busy the device was and what its methods ran in
        assert 0 < it["timings"]["device_busy"] <= 1 and it["timings"]["unit"] > 0
        assert it["precision"] == {"saliency": "fp32"} and it["precision_guard"] == {}   # saliency has no guard
    scraped = admin.session.get(f"{admin.server}/metrics", timeout=10).text   # /metrics needs the admin key
    metrics = dict(line.rsplit(" ", 1) for line in scraped.splitlines() if line.startswith("xaiq_"))
    assert float(metrics["xaiq_device_seconds_total"]) > 0
    assert 0 < float(metrics["xaiq_device_busy_ratio"]) <= 1


def test_job_from_uploaded_images(client, digits_model, digit_pngs):
    paths = client.upload(digit_pngs[0][:5], folder="sets/e2e")
    assert paths == [f"sets/e2e/{name}" for name, _ in digit_pngs[0][:5]]
    assert set(paths) <= set(client.uploads("sets"))
    job = client.submit_uploaded(paths, model="digits-cnn", methods={"saliency": {}}, labels=[0, 1, 2, 3, 4])
    state = wait_final(client, job)
    assert state["status"] == "succeeded" and state["progress"]["done"] == 5
    items = list(client.results(job))
    assert [it["target"] for it in items] == [0, 1, 2, 3, 4]
    assert [it["name"] for it in items] == [p.rsplit("/", 1)[1] for p in paths]


def test_cli_submit_downloads_pictures_maps_and_unit_figures(stack, tenant_key, digits_model, digit_pngs, tmp_path,
                                                             monkeypatch):
    from client.cli import main

    for name, png in digit_pngs[0][:3]:
        (tmp_path / name).write_bytes(png)
    monkeypatch.setenv("XAIQ_API_KEY", tenant_key)
    out = tmp_path / "out"
    rc = main(["submit", str(tmp_path), "--model", "digits-cnn", "--method", "saliency", "--method", "filters",
               "--params", '{"filters": {"layer": "cnn.4", "filters": [0, 1], "iterations": 5}}',
               "--server", stack.api_url, "--out", str(out)])
    assert rc == 0
    (job_dir,) = out.iterdir()
    files = {p.relative_to(job_dir).as_posix() for p in job_dir.rglob("*") if p.is_file()}
    stems = [Path(name).stem for name, _ in digit_pngs[0][:3]]
    assert {f"00000-{stems[0]}/saliency.png", f"00002-{stems[2]}/filters.npy", "results.json", "units/0/figure.png",
            "units/0/filters-visualizations-1.png"} <= files, sorted(files)
    record = json.loads((job_dir / "results.json").read_text())
    assert record["job"] == job_dir.name and [im["name"] for im in record["images"]] == [n for n, _ in digit_pngs[0][:3]]

"""The models people have, through the running service: a user's save_pretrained ViT,
ResNet and ConvNeXt (zipped, spec from their configs), a torch.export program and a
TorchScript model are registered over HTTP and checked by the worker; a job runs every
method on each (or the method is refused at submit with the methods the model supports),
and the ViT and the ResNet go through an audit."""
from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from shared.methods import METHODS
from tests import zoo
from tests.conftest import wait_final

DIGIT_SPEC = {"input": {"channels": 1, "height": 32, "width": 32}, "mean": [0.25], "std": [0.35],
              "classes": [str(i) for i in range(10)]}


def photos(n: int, size=(45, 37)) -> list[tuple[str, bytes]]:
    """Colour pictures of another size than the models take (they resize as their preprocessing says)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
        out.append((f"photo-{i}.png", buf.getvalue()))
    return out


@pytest.fixture(scope="module")
def registered(client, tmp_path_factory, digits_model):
    """name -> the manifest of each format, registered by tenant alice over HTTP."""
    uploads = {f"hf-{kind}": (zoo.hf_zip(kind, tmp_path_factory.mktemp(kind)), {"architecture": "huggingface"})
               for kind in ("vit", "resnet", "convnext")}
    digits = zoo.digits_cnn()
    uploads["exported-digits"] = (zoo.exported(digits, torch.randn(2, 1, 32, 32)),
                                  {"architecture": "export", **DIGIT_SPEC})
    uploads["scripted-digits"] = (zoo.scripted(digits), {"architecture": "torchscript", **DIGIT_SPEC})
    out = {}
    for name, (data, spec) in uploads.items():
        r = client.session.post(f"{client.server}/v1/models", files={"weights": (f"{name}.bin", data)},
                                data={"spec": json.dumps({"name": name, **spec})}, timeout=60)
        assert r.status_code == 202, r.text
    deadline = time.monotonic() + 300
    for name in uploads:
        out[name] = client.model(name)
        while out[name]["status"] == "registering" and time.monotonic() < deadline:
            time.sleep(0.5)
            out[name] = client.model(name)
        assert out[name]["status"] == "ready", out[name]
    return out


def all_methods(info: dict) -> dict:
    """Every method with its small example parameters; the layer: a conv (or token) layer."""
    conv = [layer["path"] for layer in info["layers"] if layer.get("conv")]
    return {name: m.example_params(conv[-1] if conv else "") for name, m in METHODS.items()}


def test_hugging_face_specs_come_from_their_configs(registered):
    vit = registered["hf-vit"]
    assert vit["classes"] == zoo.CLASSES and vit["input"] == {"channels": 3, "height": 32, "width": 32}
    assert vit["mean"] == [0.5, 0.5, 0.5] and vit["hooks"] and vit["gflops"] > 0
    assert any(layer.get("tokens") for layer in vit["layers"])
    assert registered["hf-convnext"]["mean"] == pytest.approx([0.485, 0.456, 0.406])


@pytest.mark.parametrize("name", ["hf-vit", "hf-resnet", "hf-convnext", "exported-digits"])
def test_every_method_runs_on_every_format(client, registered, digit_pngs, name):
    info = registered[name]
    pictures = photos(3) if info["input"]["channels"] == 3 else digit_pngs[0][:3]
    methods = {m: p for m, p in all_methods(info).items() if not METHODS[m].refusal(info)}   # what its format takes
    job = client.submit(pictures, model=name, methods=methods)
    state = wait_final(client, job, timeout=300)
    assert state["status"] == "succeeded", state
    for item in client.results(job):
        assert set(item["methods"]) == set(methods), item
        png = Image.open(io.BytesIO(requests.get(item["methods"]["gradcam"]["png"], timeout=30).content))
        assert png.size == Image.open(io.BytesIO(pictures[item["index"]][1])).size   # the input's own size
        assert item["prediction"]["class"] in info["classes"]


def test_torchscript_runs_what_it_can_and_says_what_it_cannot(client, registered, digit_pngs):
    info = registered["scripted-digits"]
    assert info["hooks"] is False
    methods = all_methods(info)
    r = client.session.post(f"{client.server}/v1/jobs", files=[("images", p) for p in digit_pngs[0][:2]],
                            data={"spec": json.dumps({"model": "scripted-digits",
                                                      "methods": {"gradcam": methods["gradcam"]}})}, timeout=60)
    assert r.status_code == 422 and "hook" in r.json()["error"]["message"]
    hookless = {m: p for m, p in methods.items() if not METHODS[m].uses_hooks}
    job = client.submit(digit_pngs[0][:2], model="scripted-digits", methods=hookless)
    assert wait_final(client, job, timeout=300)["status"] == "succeeded"


@pytest.mark.parametrize("name", ["hf-vit", "hf-resnet"])
def test_an_audit_of_a_hugging_face_model(client, registered, name, tmp_path):
    folder = tmp_path / "set"
    for i, (fname, png) in enumerate(photos(12)):
        (folder / zoo.CLASSES[i % 4]).mkdir(parents=True, exist_ok=True)
        (folder / zoo.CLASSES[i % 4] / fname).write_bytes(png)
    audit = client.audit(folder, model=name, methods={"saliency": {}, "gradcam": {}},
                         options={"sanity_sample": 4, "faithfulness_steps": 4})
    state = client.wait(audit, timeout=300, path="/v1/audits")
    assert state["status"] == "succeeded", state
    report = client.report(audit)["report"]
    assert report["n_images"] == 12 and report["sanity"]

"""The compared attribution methods through the service: bad method specs are a clear 422 at
submit (before a worker could fail on them), what a model's format cannot run is refused
with advice that works, a job's cost counts an occlusion's window positions, and every new
method runs end to end in the worker with the maps a local run gives."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import requests
import torch

import worker.explain as E
from tests.conftest import to_model_input, wait_final

NEW = {"input_x_gradient": {}, "guided_backprop": {}, "gradient_shap": {"samples": 5, "seed": 4},
       "deeplift": {"baseline": "mean"}, "occlusion": {"window": 12, "stride": 8, "precision": "fp32"},
       "lrp": {"rule": "epsilon", "first_layer": "rule"}}


def post_job(http, spec, pngs):
    data = {"spec": json.dumps(spec), "images": [(io.BytesIO(b), name) for name, b in pngs]}
    return http.post("/v1/jobs", data=data, content_type="multipart/form-data")


def error(resp, code=422) -> str:
    body = resp.get_json()
    assert resp.status_code == code, body
    assert body["error"]["code"] == code
    return body["error"]["message"]


@pytest.fixture(scope="module")
def scripted(app, stack, tenant_key, digits_torch):
    """The digits CNN registered as TorchScript by tenant alice (a worker checks it): its manifest."""
    from tests.api.test_models import register

    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {tenant_key}"
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(digits_torch), buf)
    spec = {"name": "digits-scripted", "architecture": "torchscript", "input": {"channels": 1, "height": 32, "width": 32},
            "mean": [0.25], "std": [0.35], "classes": [str(i) for i in range(10)]}
    info = register(c, spec, buf.getvalue()).get_json()
    assert info["status"] == "ready" and info["hooks"] is False, info
    return info


def test_a_misspelt_parameter_names_the_method_the_fix_and_the_valid_ones(http, digits_model, digit_pngs):
    resp = post_job(http, {"model": "digits-cnn", "methods": {"saliency": {}, "lime": {"num_sample": 100}}},
                    digit_pngs[0][:1])
    msg = error(resp)
    assert msg.startswith("methods.lime.num_sample: lime has no parameter 'num_sample'; did you mean 'num_samples'?")
    assert "its parameters: num_samples, n_segments" in msg
    assert resp.get_json()["error"]["details"][0]["loc"] == "methods.lime.num_sample"
    assert "did you mean 'window'" in error(post_job(http, {"model": "digits-cnn", "methods": {"occlusion": {
        "windows": 8}}}, digit_pngs[0][:1]))


def test_a_filter_out_of_range_on_a_container_layer_is_422(http, digits_model, digit_pngs):
    layer = {x["path"]: x for x in http.get("/v1/models/digits-cnn").get_json()["layers"]}["cnn"]
    assert layer["out_channels"] is None and layer["shape"] == [64, 4, 4]   # the case: a container's channels
    msg = error(post_job(http, {"model": "digits-cnn", "methods": {"filters": {"layer": "cnn", "filters": [1000]}}},
                         digit_pngs[0][:1]))
    assert "1000 is out of range; layer 'cnn' has 64 filters" in msg


def test_an_occlusion_window_larger_than_the_input_is_422(http, digits_model, digit_pngs):
    msg = error(post_job(http, {"model": "digits-cnn", "methods": {"occlusion": {"window": 40, "stride": 8}}},
                         digit_pngs[0][:1]))
    assert "window: 40 pixels do not fit the model's 32x32 input" in msg


def test_torchscript_refusals_advise_what_works(http, scripted, digit_pngs):
    one = digit_pngs[0][:1]
    for name in ("gradcam", "guided_backprop", "deeplift"):
        msg = error(post_job(http, {"model": "digits-scripted", "methods": {name: {}}}, one))
        assert f"methods.{name}:" in msg and "torchscript" in msg and "hook" in msg
        assert "torch.export.export(model" in msg and "register the architecture" not in msg
    msg = error(post_job(http, {"model": "digits-scripted", "methods": {"lrp": {}}}, one))
    assert "Formats that can: safetensors, state_dict, huggingface." in msg


def test_torchscript_runs_the_methods_it_takes(client, scripted, digit_pngs, digits_torch):
    pngs = digit_pngs[0][:2]
    methods = {m: NEW[m] for m in ("input_x_gradient", "gradient_shap", "occlusion")}
    job = client.submit(pngs, model="digits-scripted", methods=methods)
    assert wait_final(client, job)["status"] == "succeeded"
    _same_maps_as_here(client, job, pngs, methods, digits_torch)


def test_the_new_methods_end_to_end_and_the_occlusion_cost(client, digits_model, digit_pngs, digits_torch):
    pngs = digit_pngs[0][:3]
    job = client.submit(pngs, model="digits-cnn", methods=NEW)
    state = wait_final(client, job)
    assert state["status"] == "succeeded", state
    _same_maps_as_here(client, job, pngs, NEW, digits_torch)
    only = client.submit(pngs, model="digits-cnn", methods={"occlusion": NEW["occlusion"]})
    gflops = client.model("digits-cnn")["gflops"]
    positions = 4 * 4                                   # windows at 0, 8, 16, 24 on each side of 32
    decode = 3 * 32 * 32 / 1e6 * 0.1                    # three 32x32 images decoded (XAIQ_DECODE_GFLOP_PER_MPIXEL)
    assert client.status(only)["cost"] == pytest.approx(3 * (1 + (1 + positions)) * gflops + decode)
    assert wait_final(client, only)["status"] == "succeeded"


def _same_maps_as_here(client, job, pngs, methods, model):
    """Each stored map (.npy) equals the method run here on the same network and input."""
    x = torch.tensor(np.stack([to_model_input(png) for _, png in pngs]))
    items = sorted(client.results(job), key=lambda it: it["index"])
    y = torch.tensor([it["target"] for it in items])
    for name, params in methods.items():
        ref = E.run(name, model, x, y, params).maps
        for it in items:
            npy = np.load(io.BytesIO(requests.get(it["methods"][name]["npy"], timeout=30).content))
            assert npy.dtype == np.float32 and npy.shape == (1, 32, 32), name
            np.testing.assert_allclose(npy, ref[it["index"]], rtol=1e-4, atol=1e-5 * np.abs(ref).max(), err_msg=name)
            assert requests.get(it["methods"][name]["png"], timeout=30).status_code == 200

from __future__ import annotations

import io
import json
import time

import pytest
import torch


def register(http, spec, weights: bytes, replace=True):
    """POST the model (202 at once), then poll until a worker has checked it: its final manifest."""
    resp = http.post("/v1/models" + ("?replace=1" if replace else ""), content_type="multipart/form-data",
                     data={"spec": json.dumps(spec), "weights": (io.BytesIO(weights), "w.bin")})
    if resp.status_code != 202:
        return resp
    status = resp.get_json()["status"]
    if status != "registering":             # a warm worker checked it before the answer was read
        assert status in ("ready", "invalid")
        return resp
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        info = http.get(f"/v1/models/{spec['name']}")
        if info.get_json()["status"] != "registering":
            return info
        time.sleep(0.2)
    raise AssertionError(f"model {spec['name']} still registering")


def test_digits_model_lists_its_layers(http, digits_model):
    info = http.get("/v1/models/digits-cnn").get_json()
    assert info["status"] == "ready" and info["format"] == "safetensors" and info["shared"]
    assert info["gflops"] == pytest.approx(0.00528, rel=0.05) and len(info["version"]) == 16
    paths = {layer["path"]: layer for layer in info["layers"]}
    assert paths["cnn.0"]["conv"] and paths["cnn.0"]["out_channels"] == 16
    assert paths["cnn.11"]["type"] == "MaxPool2d" and paths["cnn.11"]["out_channels"] == 64
    assert "fc.2" in paths
    assert any(m["name"] == "digits-cnn" for m in http.get("/v1/models").get_json()["models"])


def test_food11_accepts_a_state_dict_from_the_course(http, digits_model):
    """A state_dict saved with torch.save(model.state_dict()); DataParallel adds 'module.'."""
    from worker.models.architectures import Food11CNN

    sd = {f"module.{k}": v for k, v in Food11CNN().state_dict().items()}
    buf = io.BytesIO()
    torch.save(sd, buf)
    spec = {"name": "food11-test", "architecture": "food11-cnn", "input": {"channels": 3, "height": 128, "width": 128},
            "mean": [0, 0, 0], "std": [1, 1, 1], "classes": [f"c{i}" for i in range(11)]}
    resp = register(http, spec, buf.getvalue())
    info = resp.get_json()
    assert info["status"] == "ready", info
    assert info["format"] == "state_dict" and info["parameters"] > 12_000_000
    assert {"cnn.15", "fc.4"} <= {layer["path"] for layer in info["layers"]}


@pytest.fixture(scope="module")
def digits_ts(app, stack, tenant_key, digits_torch):
    """The digits CNN registered as a TorchScript model by tenant alice: its manifest."""
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {tenant_key}"
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(digits_torch), buf)
    spec = {"name": "digits-ts", "architecture": "torchscript", "input": {"channels": 1, "height": 32, "width": 32},
            "mean": [0.25], "std": [0.35], "classes": [str(i) for i in range(10)]}
    return register(c, spec, buf.getvalue())


def test_torchscript_model(digits_ts):
    info = digits_ts.get_json()
    assert info["status"] == "ready", info
    assert "cnn.0" in {layer["path"] for layer in info["layers"]} and info["hooks"] is False


def test_pickled_code_and_wrong_weights_are_refused(http, digits_model):
    spec = {"name": "bad", "architecture": "digits-cnn", "input": {"channels": 1, "height": 32, "width": 32},
            "mean": [0.5], "std": [0.5], "classes": [str(i) for i in range(10)]}
    buf = io.BytesIO()
    torch.save(torch.nn.Linear(2, 2), buf)  # a whole module = a pickle of code: weights_only refuses it
    info = register(http, spec, buf.getvalue()).get_json()
    assert info["status"] == "invalid" and "not a plain state_dict" in info["error"], info
    assert "Linear" in info["error"] and "weights_only" not in info["error"]
    from worker.models.architectures import Food11CNN

    buf = io.BytesIO()
    torch.save(Food11CNN().state_dict(), buf)
    info = register(http, spec, buf.getvalue()).get_json()
    assert info["status"] == "invalid" and "key" in info["error"], info


def test_model_spec_is_validated(http):
    spec = {"name": "x y", "architecture": "resnet9000", "input": {"channels": 1, "height": 32, "width": 32},
            "mean": [0.5, 0.5], "std": [0.5], "classes": ["a", "b"]}
    resp = register(http, spec, b"123")
    assert resp.status_code == 422
    msg = resp.get_json()["error"]["message"]
    assert "name" in msg and "architecture" in msg
    ok = {**spec, "name": "fine", "architecture": "digits-cnn", "mean": [0.5]}
    r = http.post("/v1/models", content_type="multipart/form-data", data={"spec": json.dumps(ok)})
    assert r.status_code == 400 and "weights" in r.get_json()["error"]["message"]
    assert register(http, {**ok, "name": "digits-cnn"}, b"123", replace=False).status_code == 409


def test_openapi_document_and_docs_page(http):
    doc = http.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3")
    for path in ("/v1/jobs", "/v1/jobs/{job}", "/v1/jobs/{job}/results", "/v1/models", "/v1/models/{name}",
                 "/healthz", "/readyz"):
        assert path in doc["paths"], path
    assert {"JobSpec", "JobView", "ResultsPage", "ModelInfo", "Error"} <= set(doc["components"]["schemas"])
    page = http.get("/docs")
    assert page.status_code == 200 and b"swagger-ui" in page.data
    assert http.get("/docs/assets/swagger-ui-bundle.js").status_code == 200


def test_health_and_readiness(http):
    assert http.get("/healthz").get_json() == {"status": "ok"}
    ready = http.get("/readyz").get_json()
    assert ready == {"status": "ok", "checks": {"redis": "ok", "storage": "ok"}}


def test_readyz_reports_unreachable_storage(settings):
    from api import create_app

    app = create_app(settings.model_copy(update={"s3_endpoint": "http://127.0.0.1:1"}), reaper=False)
    resp = app.test_client().get("/readyz")
    assert resp.status_code == 503 and resp.get_json()["checks"]["storage"].startswith("error")


def test_layer_methods_are_refused_on_torchscript_models(http, digits_ts, digit_pngs):
    assert digits_ts.get_json()["status"] == "ready"
    data = {"spec": json.dumps({"model": "digits-ts", "methods": {"gradcam": {}}}),
            "images": [(io.BytesIO(digit_pngs[0][0][1]), "a.png")]}
    resp = http.post("/v1/jobs", data=data, content_type="multipart/form-data")
    assert resp.status_code == 422
    assert "hook" in resp.get_json()["error"]["message"] and "torchscript" in resp.get_json()["error"]["message"]


DIGITS_SPEC = {"architecture": "digits-cnn", "input": {"channels": 1, "height": 32, "width": 32}, "mean": [0.5],
               "std": [0.5], "classes": [str(i) for i in range(10)]}


def _digits_weights() -> bytes:
    from worker.models.digits import WEIGHTS

    return (WEIGHTS / "digits-cnn.safetensors").read_bytes()


def _nothing_stored(settings, keys, name: str) -> bool:
    from shared.storage import Storage

    return Storage(settings, patient=True).list(keys.model_files(name)) == []


def _inspections_waiting(settings, name: str) -> bool:
    """Whether an inspection of `name` is still queued or running."""
    from shared.jobs import redis_client
    from shared.redis_keys import RedisKeys

    r = redis_client(settings, patient=False)
    k = RedisKeys(settings.redis_prefix)
    items = r.lrange(k.pending("alice"), 0, -1) + r.zrange(k.leases, 0, -1)
    return any(f'"{name}"' in item for item in items)


def test_any_model_of_yours_can_be_deleted(http, settings, tmp_path, digits_model):
    """invalid, ready and registering models are deleted with everything stored for them; an
    inspection that finishes after the delete writes nothing back."""
    from shared.storage import Keys
    from tests.conftest import wait_until

    keys = Keys("alice")
    bad = register(http, {**DIGITS_SPEC, "name": "del-invalid"}, b"not weights").get_json()
    assert bad["status"] == "invalid"
    good = register(http, {**DIGITS_SPEC, "name": "del-ready"}, _digits_weights()).get_json()
    assert good["status"] == "ready"
    for name in ("del-invalid", "del-ready"):
        resp = http.delete(f"/v1/models/{name}")
        assert resp.status_code == 200 and resp.get_json() == {"deleted": name, "shared": False}, resp.get_json()
        assert http.get(f"/v1/models/{name}").status_code == 404
        assert _nothing_stored(settings, keys, name)
    assert not {"del-invalid", "del-ready"} & {m["name"] for m in http.get("/v1/models").get_json()["models"]}
    # a Hugging Face model takes seconds to inspect (transformers is imported): deleted meanwhile
    spec = {"name": "del-registering", "architecture": "huggingface", "input": {"channels": 3, "height": 44,
            "width": 44}, "mean": [0.5] * 3, "std": [0.5] * 3}   # a size of its own: no remembered verdict
    resp = http.post("/v1/models", content_type="multipart/form-data",
                     data={"spec": json.dumps(spec), "weights": (io.BytesIO(_hf_upload("resnet", tmp_path, False)),
                                                                 "m.zip")})
    assert resp.status_code == 202
    assert http.get("/v1/models/del-registering").get_json()["status"] == "registering"
    assert http.delete("/v1/models/del-registering").status_code == 200
    wait_until(lambda: not _inspections_waiting(settings, "del-registering"), 120, "the inspection")
    assert http.get("/v1/models/del-registering").status_code == 404
    assert _nothing_stored(settings, keys, "del-registering")
    assert http.delete("/v1/models/del-registering").status_code == 404


def test_shared_models_are_deleted_only_with_the_admin_key(http, app, stack, digits_model, other_client):
    admin = app.test_client()
    admin.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {stack.api_key}"
    resp = admin.post("/v1/models?shared=1", content_type="multipart/form-data",
                      data={"spec": json.dumps({**DIGITS_SPEC, "name": "shared-doomed"}),
                            "weights": (io.BytesIO(b"not weights"), "w.bin")})
    assert resp.status_code == 202
    for path in ("/v1/models/shared-doomed", "/v1/models/shared-doomed?shared=1", "/v1/models/digits-cnn"):
        resp = http.delete(path)
        assert resp.status_code == 403 and "admin" in resp.get_json()["error"]["message"], path
    assert http.get("/v1/models/shared-doomed").status_code == 200
    # another tenant's model is unknown, as on every route
    mine = register(http, {**DIGITS_SPEC, "name": "alices-own"}, b"not weights").get_json()
    assert mine["status"] == "invalid"
    assert other_client.session.delete(f"{other_client.server}/v1/models/alices-own").status_code == 404
    assert http.get("/v1/models/alices-own").status_code == 200
    resp = admin.delete("/v1/models/shared-doomed")
    assert resp.status_code == 200 and resp.get_json() == {"deleted": "shared-doomed", "shared": True}
    assert http.get("/v1/models/shared-doomed").status_code == 404
    assert http.delete("/v1/models/alices-own").status_code == 200


def _hf_upload(kind: str, folder, preprocessor: bool) -> bytes:
    from tests import zoo

    zoo.build(kind).eval().save_pretrained(folder)
    if preprocessor:
        (folder / "preprocessor_config.json").write_text(json.dumps(zoo.processor(kind)))
    return zoo.zip_folder(folder)


def test_a_resnet_without_preprocessor_config_takes_the_specs_size(http, tmp_path, digits_model):
    """save_pretrained of a ResNet writes no preprocessor_config.json and its config has no
    image_size: without `input` in the spec that is a 422 that says to give it; with `input`,
    `mean` and `std` the model registers with them (classes from id2label)."""
    from tests import zoo

    data = _hf_upload("resnet", tmp_path, preprocessor=False)
    resp = register(http, {"name": "hf-resnet-bare", "architecture": "huggingface"}, data)
    assert resp.status_code == 422 and "give the spec's input" in resp.get_json()["error"]["message"]
    given = {"input": {"channels": 3, "height": 40, "width": 40}, "mean": [0.485, 0.456, 0.406],
             "std": [0.229, 0.224, 0.225]}
    info = register(http, {"name": "hf-resnet-bare", "architecture": "huggingface", **given}, data).get_json()
    assert info["status"] == "ready", info
    assert {k: info[k] for k in given} == given and info["classes"] == zoo.CLASSES
    assert info["format"] == "huggingface" and info["layers"]


def test_a_vits_configs_give_way_to_the_spec(http, tmp_path, digits_model):
    """Where the spec and the ViT's preprocessor_config.json both speak (mean, std), the spec wins."""
    data = _hf_upload("vit", tmp_path, preprocessor=True)
    spec = {"name": "hf-vit-spec", "architecture": "huggingface", "mean": [0.1, 0.2, 0.3], "std": [0.3, 0.2, 0.1]}
    info = register(http, spec, data).get_json()
    assert info["status"] == "ready", info
    assert info["mean"] == spec["mean"] and info["std"] == spec["std"]
    assert info["input"] == {"channels": 3, "height": 32, "width": 32}   # silent in the spec: the configs'


def test_file_references_that_leave_the_archive_are_refused_alike(http, tmp_path, digits_model):
    """An absolute path, a '../' path, a symbolic link or a .bin shard: each registration is
    refused with the same text whether the outside file it names exists or not, and that
    text names nothing outside the archive."""
    from shared.huggingface import OUTSIDE
    from tests.worker.models.attacks import attacks

    messages = {}
    for attack, variants in attacks(tmp_path).items():
        for n, data in enumerate(variants):
            resp = register(http, {"name": "escape", "architecture": "huggingface"}, data)
            assert resp.status_code == 422, (attack, resp.get_json())
            messages[attack, n] = resp.get_json()["error"]["message"]
    assert set(messages.values()) == {f"weights: {OUTSIDE}"}, messages
    assert not any(word in OUTSIDE for word in ("etc", "passwd", "xaiq-no-such-file", "No such", "denied"))
    assert http.get("/v1/models/escape").status_code == 404


def test_the_formats_are_the_registrys(http):
    from shared.formats import MODEL_FORMATS

    schema = http.get("/openapi.json").get_json()["components"]["schemas"]["ModelInfo"]["properties"]["format"]
    assert schema["enum"] == list(MODEL_FORMATS)

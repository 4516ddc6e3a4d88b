"""Tenants are strangers: every route of the OpenAPI document, called by tenant bob with
tenant alice's ids, answers exactly as for an unknown id (or refuses an admin-only
route), and no answer carries alice's objects. The walk covers every documented route
and every route is documented, so a new route cannot forget."""
from __future__ import annotations

import io
import re
import json
import zipfile

import pytest
import requests

from tests.conftest import wait_final

ID_PARAMS = {"job", "audit", "name", "key_id", "tenant"}


@pytest.fixture(scope="module")
def alices(client, admin, digits_model, digit_pngs):
    """Alice's objects: a job, an audit, a model of her own, uploads, a key id."""
    from worker.models import digits

    pngs = digit_pngs[0][:4]
    job = client.submit(pngs, model="digits-cnn", methods={"saliency": {}}, name="alice-secret-job")
    client.upload(pngs, folder="alice-set/0")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, png in pngs:
            z.writestr(f"0/{name}", png)
    audit = client.session.post(f"{client.server}/v1/audits", files={"dataset": ("d.zip", buf.getvalue())},
                                data={"spec": json.dumps({"model": "digits-cnn", "options": {"sanity_sample": 2}})})
    assert audit.status_code == 202, audit.text
    model = client.register_model({**digits.manifest(), "name": "alice-model"},
                                  digits.WEIGHTS / "digits-cnn.safetensors")
    assert model["status"] == "ready", model
    wait_final(client, job)
    wait_final(client, audit.json()["id"])
    key_id = next(k["id"] for k in admin.keys() if k["tenant"] == "alice")
    return {"job": job, "audit": audit.json()["id"], "name": "alice-model", "key_id": key_id, "tenant": "alice",
            "upload": "alice-set/0/" + pngs[0][0], "index": 0, "unit": 0, "filename": "saliency.png"}


def body_for(path: str, ids: dict) -> dict:
    """A request body that names alice's objects, for routes that take one."""
    return {
        "/v1/jobs": {"json": {"model": ids["name"], "methods": {"saliency": {}}}},
        "/v1/audits": {"json": {"model": "digits-cnn", "dataset": "alice-set"}},
        "/v1/keys": {"json": {"tenant": "alice"}},
        "/v1/tenants/{tenant}/limits": {"json": {"max_tenant_jobs": 1}},
        "/v1/models": {"files": {"weights": ("w", b"x")},
                       "data": {"spec": json.dumps({"name": ids["name"], "architecture": "digits-cnn"})}},
        "/v1/uploads": {"files": {"f": ("a.png", b"x")}, "data": {"folder": "alice-set/0"}},
        "/ui/signin": {"data": {"key": "wrong"}},
    }.get(path, {})


def expected(method: str, path: str) -> set[int]:
    """What bob may be answered: never a 2xx that reveals alice's objects."""
    if path.startswith(("/v1/keys", "/v1/tenants")):
        return {403}                                   # admin only: bob is no admin
    if "{" in path:
        return {404}                                   # alice's id is unknown to bob
    return {
        ("post", "/v1/jobs"): {404},                   # alice's model is unknown to bob
        ("post", "/v1/audits"): {422},                 # bob has no upload folder of that name
        ("post", "/v1/models"): {201, 202, 400, 409, 422},   # bob's own namespace; never alice's model
        ("post", "/v1/uploads"): {400, 422},           # bob's own namespace
        ("post", "/ui/signin"): {401},
        ("post", "/ui/signout"): {302},
        ("get", "/ui"): {200}, ("get", "/v1/jobs"): {200}, ("get", "/v1/models"): {200},
        ("get", "/v1/uploads"): {200}, ("get", "/v1/usage"): {200}, ("get", "/ui/signin"): {200},
        ("get", "/healthz"): {200}, ("get", "/readyz"): {200}, ("get", "/v1/methods"): {200},
        ("get", "/ui/models"): {200}, ("get", "/ui/submit"): {200}, ("get", "/ui/audits/new"): {200},
    }[(method, path)]


def test_every_route_hides_alices_objects_from_bob(stack, client, other_client, alices):
    doc = requests.get(f"{stack.api_url}/openapi.json", timeout=10).json()
    secrets_of_alice = ["alice-secret-job", alices["upload"], "digit-0.png"]   # nothing bob sent himself
    walked = 0
    for path, ops in doc["paths"].items():
        for method in ops:
            url = stack.api_url + path.format(**alices)
            resp = other_client.session.request(method, url, allow_redirects=False, timeout=30,
                                                **body_for(path, alices))
            assert resp.status_code in expected(method, path), (method, path, resp.status_code, resp.text[:300])
            for secret in secrets_of_alice:
                assert secret not in resp.text, (method, path, secret)
            walked += 1
    assert walked >= 25


def test_alice_sees_her_own(client, alices):
    assert client.status(alices["job"])["status"] == "succeeded"
    assert client.report(alices["audit"])["report"]["n_images"] == 4
    assert alices["job"] in [j["id"] for j in client.session.get(f"{client.server}/v1/jobs").json()["jobs"]]


def test_every_route_is_documented(app):
    from api.openapi import spec

    with app.test_request_context():
        documented = {(p, m) for p, ops in spec.spec["paths"].items() for m in ops}
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("static", "docs.docs_assets", "docs.openapi_json", "docs.docs_page", "ui.index",
                             "metrics"):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (path, method.lower()) in documented, (path, method)


def test_bob_cannot_name_alices_objects_in_a_job(other_client, alices, digits_model):
    s, base = other_client.session, other_client.server
    for inputs in ([alices["upload"]], [f"../../alice/uploads/{alices['upload']}"],
                   [f"tenants/alice/uploads/{alices['upload']}"], ["models/digits-cnn/weights"],
                   [f"jobs/{alices['job']}/job.json"]):
        r = s.post(f"{base}/v1/jobs", json={"model": "digits-cnn", "inputs": inputs}, timeout=30)
        assert r.status_code == 422, (inputs, r.text)
    r = s.post(f"{base}/v1/audits", json={"model": "digits-cnn", "dataset": "../alice"}, timeout=30)
    assert r.status_code == 422

"""Uploaded models are hostile code and tenants strangers, through the running service:
models that read or write files, loop or eat memory are refused or stopped and leak
nothing; a request that would hold the workers for days is refused with its estimate;
tenants take turns; a job keeps its model version; registering never blocks the API."""
from __future__ import annotations

import json
import secrets
import threading
import time

import pytest
import requests
import torch
from torch import nn

from tests.conftest import wait_final, wait_until
from tests.zoo import scripted

SPEC = {"architecture": "torchscript", "input": {"channels": 1, "height": 32, "width": 32}, "mean": [0.25],
        "std": [0.35], "classes": [str(i) for i in range(10)]}


class Reader(nn.Module):
    def __init__(self, path: str, n: int):
        super().__init__()
        self.path, self.n, self.head = path, n, nn.Linear(32 * 32, 10)

    def forward(self, x):
        t = torch.from_file(self.path, False, self.n, dtype=torch.uint8)
        return self.head(x.flatten(1)) + t.float().sum() * 0


class Writer(Reader):
    def forward(self, x):
        t = torch.from_file(self.path, True, self.n, dtype=torch.uint8)
        t[:4].copy_(torch.tensor([79, 87, 78, 68], dtype=torch.uint8))      # the write's result is used below
        return self.head(x.flatten(1)) + t.float().sum() * 0


class Looper(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(32 * 32, 10)

    def forward(self, x):
        y = x
        while bool(y.sum() > -1e30):      # forever, with allowed operators only
            y = y + 1
        return self.head(y.flatten(1))


class Hog(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(32 * 32, 10)

    def forward(self, x):
        waste = torch.ones(1 << 38)        # 1 TB of floats
        return self.head(x.flatten(1)) + waste[:1]


def post_model(client, name: str, data: bytes) -> requests.Response:
    return client.session.post(f"{client.server}/v1/models", files={"weights": ("m.pt", data)},
                               data={"spec": json.dumps({**SPEC, "name": name})}, timeout=30)


def wait_model(client, name: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = client.model(name)
        if info["status"] != "registering":
            return info
        time.sleep(0.3)
    raise AssertionError(f"{name} still registering")


@pytest.fixture()
def secret_file(tmp_path):
    path = tmp_path / "secret.txt"
    secret = "TOPSECRET-" + secrets.token_hex(16)
    path.write_text(secret * 4)
    path.chmod(0o644)
    tmp_path.chmod(0o755)
    return path, secret


def everything_alice_stored(settings) -> bytes:
    from shared.storage import Keys, Storage

    st = Storage(settings, patient=True)   # a check of the test, not an API call
    return b"".join(st.get(k) for k in st.list(Keys("alice").models()))


def test_a_model_that_reads_a_file_is_refused_and_leaks_nothing(client, settings, secret_file, digits_model):
    path, secret = secret_file
    reply = post_model(client, "reader", scripted(Reader(str(path), 32)))
    assert reply.status_code == 202 and secret not in reply.text
    info = wait_model(client, "reader")
    assert info["status"] == "invalid" and "aten::from_file" in info["error"], info
    listing = client.session.get(f"{client.server}/v1/models", timeout=30).text
    assert secret not in json.dumps(info) and secret not in listing
    assert secret.encode() not in everything_alice_stored(settings)


def test_a_model_that_writes_a_file_is_refused_and_the_file_stays(client, tmp_path, digits_model):
    target = tmp_path / "target.py"
    target.write_text("print('the original')\n" * 4)
    target.chmod(0o644)
    tmp_path.chmod(0o755)
    before = target.read_bytes()
    assert post_model(client, "writer", scripted(Writer(str(target), 16))).status_code == 202
    info = wait_model(client, "writer")
    assert info["status"] == "invalid" and "aten::from_file" in info["error"], info
    assert target.read_bytes() == before


def test_a_looping_or_hungry_model_is_stopped_and_the_api_stays_quick(client, stack, digits_model):
    assert post_model(client, "looper", scripted(Looper())).status_code == 202
    assert post_model(client, "hog", scripted(Hog())).status_code == 202
    slowest = 0.0
    while client.model("looper")["status"] == "registering":
        t = time.monotonic()
        assert requests.get(f"{stack.api_url}/healthz", timeout=5).ok
        slowest = max(slowest, time.monotonic() - t)
        time.sleep(0.2)
    print(f"/healthz while a looping and a hungry model were checked: at most {slowest * 1000:.0f} ms")
    # The API never waits on a check (it runs in the worker, up to XAIQ_MODEL_INSPECT_TIMEOUT_S,
    # 12 s here); 2 s is far above what a loaded 2-core machine adds to a quick answer.
    assert slowest < 2.0, slowest
    looper, hog = wait_model(client, "looper"), wait_model(client, "hog")
    assert looper["status"] == "invalid" and "did not finish" in looper["error"], looper
    assert hog["status"] == "invalid", hog
    assert "1099511627776" not in hog["error"]


def test_the_request_for_days_of_work_is_refused_with_its_estimate(client, digits_model):
    body = {"model": "digits-cnn", "inputs": ["any/a.png"] * 20000, "unit_size": 1,
            "methods": {"filters": {"layer": "cnn.8", "filters": list(range(64)), "iterations": 2000},
                        "lime": {"num_samples": 20000}}}
    r = client.session.post(f"{client.server}/v1/jobs", json=body, timeout=30)
    assert r.status_code == 413, r.text
    err = r.json()["error"]
    assert err["details"]["estimate"] > err["details"]["limit"] and "GFLOP" in err["message"]


def test_a_tenants_limits_answer_429_and_can_be_set(client, admin, digit_pngs, digits_model):
    admin.set_limits("alice", max_tenant_units=3)
    try:
        slow = client.submit(digit_pngs[0][:2], model="digits-cnn", methods={"lime": {"num_samples": 3000}},
                             unit_size=1)
        r = client.session.post(f"{client.server}/v1/jobs", files=[("images", p) for p in digit_pngs[0][:2]],
                                data={"spec": json.dumps({"model": "digits-cnn", "unit_size": 1})}, timeout=30)
        assert r.status_code == 429 and r.headers["Retry-After"], r.text
        assert r.json()["error"]["details"]["limit"] == "units"
        client.cancel(slow)
    finally:
        admin.set_limits("alice", max_tenant_units=None)
    assert client.usage()["limits"]["max_tenant_units"] == 10000


def test_a_small_job_of_one_tenant_starts_within_a_unit_of_anothers_long_queue(stack, admin, digit_pngs,
                                                                              digits_model):
    from client.sdk import Client

    carol = Client(stack.api_url, admin.create_key("carol")["key"])
    dave = Client(stack.api_url, admin.create_key("dave")["key"])
    methods = {"lime": {"num_samples": 600, "n_segments": 40}}
    big = carol.submit(digit_pngs[0][:30], model="digits-cnn", methods=methods, unit_size=1)    # 30 units
    wait_until(lambda: carol.status(big)["status"] == "running", 60, "carol's job to run")
    small = dave.submit(digit_pngs[0][30:40], model="digits-cnn", methods={"saliency": {}})
    done = wait_final(dave, small, timeout=120)
    queued = carol.status(big)
    assert done["status"] == "succeeded"
    assert queued["status"] == "running" and queued["progress"]["done"] < 30, queued
    unit_s = (time.time() - queued["started"]) / max(1, queued["progress"]["done"])
    waited = done["started"] - done["created"]
    print(f"fair turns: dave waited {waited:.2f} s behind carol's 30 units of ~{unit_s:.2f} s each")
    assert waited < 3 * unit_s + 2.0      # a few of carol's units (measured in this run), not her queue
    carol.cancel(big)


def test_a_job_keeps_its_model_version_through_a_replace(client, digit_pngs, digits_model):
    from safetensors.torch import save

    from worker.models import digits
    from worker.models.architectures import DigitsCNN

    spec = {**digits.manifest(), "name": "versioned"}
    v1 = client.register_model(spec, digits.WEIGHTS / "digits-cnn.safetensors", replace=True)
    job = client.submit(digit_pngs[0][:12], model="versioned", methods={"lime": {"num_samples": 300}}, unit_size=2)
    three = save(DigitsCNN(num_classes=3).state_dict())
    v2 = client.register_model({**spec, "classes": ["a", "b", "c"]}, three, replace=True)
    assert v2["status"] == "ready" and v2["version"] != v1["version"]
    state = wait_final(client, job)
    assert state["status"] == "succeeded" and state["model_version"] == v1["version"], state
    assert all(len(it["prediction"]["probabilities"]) == 10 for it in client.results(job))
    info = client.model("versioned")
    assert [v["version"] for v in info["versions"]][-2:] == [v1["version"], v2["version"]]
    assert info["classes"] == ["a", "b", "c"]


def test_registrations_never_block_the_api(client, stack, digit_pngs, digits_model):
    from worker.models import digits

    busy = client.submit(digit_pngs[0][:4], model="digits-cnn", methods={"lime": {"num_samples": 4000}},
                         unit_size=1)
    weights = (digits.WEIGHTS / "digits-cnn.safetensors").read_bytes()
    answers, latencies = [], []

    def register(i):
        t = time.monotonic()
        r = client.session.post(f"{client.server}/v1/models", files={"weights": ("w", weights)},
                                data={"spec": json.dumps({**digits.manifest(), "name": f"many-{i}"})},
                                params={"replace": 1}, timeout=30)
        answers.append((r.status_code, time.monotonic() - t))

    threads = [threading.Thread(target=register, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        t0 = time.monotonic()
        assert requests.get(f"{stack.api_url}/healthz", timeout=5).ok
        latencies.append(time.monotonic() - t0)
        time.sleep(0.02)
    for t in threads:
        t.join()
    print(f"8 registrations: answered in at most {max(a[1] for a in answers):.2f} s; /healthz at most "
          f"{max(latencies) * 1000:.0f} ms over {len(latencies)} calls")
    assert {a[0] for a in answers} == {202}
    assert max(latencies) < 2.0      # generous: a check (seconds) is never waited on by the API
    client.cancel(busy)
    assert all(wait_model(client, f"many-{i}", 180)["status"] == "ready" for i in range(8))

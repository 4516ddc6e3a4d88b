"""Model records have one owner (`shared.models.ModelRecords`): against a real Redis and a
real S3 server, a replace and a finishing inspection run at the same time in threads, in
many orders, and neither is lost; a delete and an inspection that finishes after it leave
nothing behind."""
from __future__ import annotations

import hashlib
import random
import secrets
import threading
import time

import pytest

from shared.jobs import redis_client
from shared.models import ModelExists, ModelRecords, version_of
from shared.storage import Keys, Storage

SPEC = {"architecture": "digits-cnn", "input": {"channels": 1, "height": 32, "width": 32}, "mean": [0.5],
        "std": [0.5], "classes": ["a", "b"], "format": "safetensors"}
READY = {"status": "ready", "error": None, "layers": [{"path": "cnn.0", "type": "Conv2d", "out_channels": 4,
                                                        "conv": True}], "hooks": True, "parameters": 10, "gflops": 0.1}


class Jittery:
    """The real storage, each call delayed by a random few milliseconds: the two threads'
    reads and writes interleave differently in every round."""

    def __init__(self, st: Storage, seed: int):
        self.st, self.rng, self.lock = st, random.Random(seed), threading.Lock()

    def __getattr__(self, name):
        call = getattr(self.st, name)

        def delayed(*args, **kw):
            with self.lock:
                pause = self.rng.uniform(0, 0.015)
            time.sleep(pause)
            return call(*args, **kw)
        return delayed


@pytest.fixture()
def owner(settings):
    """A fresh tenant's keys, real storage and Redis."""
    return Storage(settings), Keys(f"race-{secrets.token_hex(4)}"), redis_client(settings, patient=False)


def _info(name: str, weights: bytes) -> dict:
    d = {**SPEC, "name": name}
    h = hashlib.sha256(weights)
    return {**d, "version": version_of(h, d), "shared": False, "weights_sha256": h.hexdigest()}


def _together(start: threading.Barrier, errors: list, fn, *args) -> None:
    """Call fn(*args) as soon as the other thread is ready too; keep what it raises."""
    start.wait()
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001 - reported by the test
        errors.append(e)


def test_a_replace_and_a_finishing_inspection_lose_nothing(owner):
    st, keys, r = owner
    name, rounds = "raced", 12
    weights = [secrets.token_bytes(64) for _ in range(rounds + 1)]
    infos = [_info(name, w) for w in weights]
    first, inspect = ModelRecords(st, keys, r).register(infos[0], weights[0], replace=False)
    assert inspect and first["status"] == "registering"
    for k in range(rounds):
        inspection = ModelRecords(Jittery(st, 2 * k), keys, r)
        replace = ModelRecords(Jittery(st, 2 * k + 1), keys, r)
        start, errors = threading.Barrier(2), []
        threads = [threading.Thread(target=_together, args=(start, errors, inspection.set_result, name,
                                                            infos[k]["version"], READY)),
                   threading.Thread(target=_together, args=(start, errors, replace.register, infos[k + 1],
                                                            weights[k + 1], True))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors
        model = ModelRecords(st, keys).get(name)
        # the replace is not lost: the new version is current and every version is listed
        assert model["version"] == infos[k + 1]["version"] and model["status"] == "registering", k
        assert [v["version"] for v in model["versions"]] == [i["version"] for i in infos[:k + 2]], k
        # the inspection is not lost: the version it checked reads ready, with its layers
        statuses = {v["version"]: v["status"] for v in model["versions"]}
        assert all(statuses[i["version"]] == "ready" for i in infos[:k + 1]), (k, statuses)
        inspected = ModelRecords(st, keys).version(name, infos[k]["version"])
        assert inspected["status"] == "ready" and inspected["layers"] == READY["layers"], k
    assert not r.keys(f"xaiq:model-lock:{keys.root}*")   # every lock released


def test_a_delete_then_a_finishing_inspection_leaves_nothing(owner):
    st, keys, r = owner
    records = ModelRecords(st, keys, r)
    weights = secrets.token_bytes(64)
    info = _info("gone", weights)
    records.register(info, weights, replace=False)
    with pytest.raises(ModelExists):
        records.register(info, weights, replace=False)
    assert records.delete("gone") == 3   # the model's record, the version's record, its weights
    assert records.set_result("gone", info["version"], READY) is None
    assert st.list(keys.model_files("gone")) == [] and records.get("gone") is None
    assert records.delete("gone") == 0
    # registered again: a fresh version record, its weights stored again, an inspection needed
    current, inspect = records.register(info, weights, replace=False)
    assert inspect and current["status"] == "registering" and st.get(keys.weights("gone", info["version"])) == weights


def test_the_same_ready_version_again_needs_no_inspection(owner):
    st, keys, r = owner
    records = ModelRecords(st, keys, r)
    weights = secrets.token_bytes(64)
    info = _info("again", weights)
    records.register(info, weights, replace=False)
    records.set_result("again", info["version"], READY)
    current, inspect = records.register(info, weights, replace=True)
    assert not inspect and current["status"] == "ready"
    assert [v["status"] for v in records.get("again")["versions"]] == ["ready"]
    invalid = {"status": "invalid", "error": "forward raised RuntimeError"}
    other_weights = secrets.token_bytes(64)
    other = _info("again", other_weights)
    records.register(other, other_weights, replace=True)
    assert records.set_result("again", other["version"], invalid)["layers"] == []
    assert records.register(other, other_weights, replace=True)[1]   # not ready: inspected again


def test_records_written_before_the_split_still_read(owner):
    """A stack's older model.json (the whole manifest, versions with their statuses) reads as
    before: statuses come from the versions' own records."""
    st, keys, r = owner
    weights = secrets.token_bytes(64)
    info = {**_info("older", weights), "status": "ready", "layers": READY["layers"], "created": 1.0}
    st.put(keys.weights("older", info["version"]), weights)
    st.put_json(keys.version("older", info["version"]), info)
    st.put_json(keys.model("older"), {**info, "status": "registering",
                                      "versions": [{"version": info["version"], "status": "registering",
                                                    "created": 1.0}]})
    model = ModelRecords(st, keys).get("older")
    assert model["status"] == "ready" and model["versions"] == [
        {"version": info["version"], "created": 1.0, "status": "ready", "error": None}]
    assert ModelRecords(st, keys, r).delete("older") == 3

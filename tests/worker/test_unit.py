"""One work unit in this process (no Celery, no API): inputs read from a real S3
server, outputs written there, the job's counters in a real Redis."""
from __future__ import annotations

import hashlib
import io
import time
import uuid

import numpy as np
import pytest
import torch

from shared.storage import Keys, Storage

keys = Keys("unit-tests")


@pytest.fixture(scope="module")
def ctx(settings):
    from worker.context import WorkerContext

    return WorkerContext(settings.model_copy(update={"device": "cpu"}))


@pytest.fixture(scope="module")
def unit_model(ctx):
    """The digits CNN installed in storage as a ready model under its own name."""
    from worker.models import digits
    from worker.models.architectures import DigitsCNN
    from worker.models.loading import layers

    name, version = "digits-unit-test", "v1"
    st: Storage = ctx.storage
    st.ensure_bucket()
    data = (digits.WEIGHTS / "digits-cnn.safetensors").read_bytes()
    st.put(keys.weights(name, version), data)
    st.put_json(keys.version(name, version), {
        **digits.manifest(), "name": name, "format": "safetensors", "version": version, "status": "ready",
        "created": time.time(), "weights_sha256": hashlib.sha256(data).hexdigest(), "layers": layers(DigitsCNN())})
    return {"name": name, "version": version}


def make_job(ctx, model: dict, pngs: list[tuple[str, bytes]], methods: dict, bad: int | None = None) -> str:
    job = uuid.uuid4().hex
    inputs = []
    for i, (name, png) in enumerate(pngs):
        ctx.storage.put(keys.input(job, i), b"not an image" if i == bad else png, "image/png")
        inputs.append({"name": name, "key": keys.input(job, i)})
    ctx.storage.put_json(keys.job(job), {"id": job, "kind": "job", "tenant": keys.tenant, "model": model["name"],
                                         "model_version": model["version"], "model_scope": "tenant",
                                         "methods": methods, "inputs": inputs, "unit_size": len(inputs), "units": 1,
                                         "created": time.time(), "labels": None, "name": None})
    ctx.jobs.create(job, tenant=keys.tenant, kind="job", model=model["name"], methods=methods, total=len(inputs),
                    units=1)
    return job


def test_a_unit_writes_every_item_and_matches_the_formula(ctx, unit_model, digit_pngs, digits_torch):
    from tests.conftest import to_model_input
    from worker.unit import run_unit

    pngs = digit_pngs[0][:5]
    job = make_job(ctx, unit_model, pngs, {"saliency": {}, "gradcam": {}}, bad=3)
    assert run_unit(ctx, keys.tenant, job, 0, 0, 5) == (4, 1)
    x = torch.tensor(np.stack([to_model_input(png) for _, png in pngs])).requires_grad_(True)
    logits = digits_torch(x)
    torch.nn.functional.cross_entropy(logits, logits.argmax(1), reduction="sum").backward()
    g = x.grad.abs().numpy()
    for i in (0, 1, 2, 4):
        item = ctx.storage.get_json(keys.item(job, i))
        assert item["status"] == "done" and item["methods"] == ["saliency", "gradcam"]
        got = np.load(io.BytesIO(ctx.storage.get(keys.item(job, i, "saliency.npy"))))
        want = (g[i] - g[i].min()) / (g[i].max() - g[i].min())
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert ctx.storage.exists(keys.item(job, i, "gradcam.png"))
    failed = ctx.storage.get_json(keys.item(job, 3))
    assert failed["status"] == "failed" and "cannot read input" in failed["error"]
    assert ctx.storage.exists(keys.unit(job, 0, "figure.png"))


def test_a_unit_stops_when_its_job_is_cancelled(ctx, unit_model, digit_pngs):
    from worker.unit import Cancelled, run_unit

    job = make_job(ctx, unit_model, digit_pngs[0][:2], {"saliency": {}})
    ctx.jobs.start_unit(job, keys.tenant, 0)
    assert ctx.jobs.cancel(job, keys.tenant) == "cancelling"
    with pytest.raises(Cancelled):
        run_unit(ctx, keys.tenant, job, 0, 0, 2)
    assert not ctx.storage.exists(keys.item(job, 0))


def test_the_audit_hook_adds_objects_and_fields(ctx, unit_model, digit_pngs):
    from worker.unit import run_unit

    job = make_job(ctx, unit_model, digit_pngs[0][:3], {"saliency": {}})
    seen = []

    def on_batch(e):
        seen.append((e.inputs.shape, sorted(e.results)))
        return [(keys.unit(job, 0, "extra.npy"), b"x")], [{"checked": j} for j in range(len(e.batch.indices))]

    assert run_unit(ctx, keys.tenant, job, 0, 0, 3, on_batch) == (3, 0)
    assert seen == [((3, 1, 32, 32), ["saliency"])]
    assert ctx.storage.get(keys.unit(job, 0, "extra.npy")) == b"x"
    assert [ctx.storage.get_json(keys.item(job, i))["checked"] for i in range(3)] == [0, 1, 2]


def test_a_unit_reports_how_busy_the_device_was_and_files_its_batch_sizes(ctx, unit_model, digit_pngs):
    from worker.context import RedisSizes
    from worker.unit import run_unit

    ctx.jobs.r.delete(RedisSizes.KEY)
    ctx.batch_sizes.local.clear()
    job = make_job(ctx, unit_model, digit_pngs[0][:4], {"lime": {"num_samples": 40, "n_segments": 12}})
    assert run_unit(ctx, keys.tenant, job, 0, 0, 4) == (4, 0)
    item = ctx.storage.get_json(keys.item(job, 0))
    timings, chosen = item["timings"], item["precision"]["lime"]
    assert chosen in ("fp32", "bf16", "fp16")
    assert {"lime", "predict", "unit", "device_busy"} <= set(timings)
    assert 0 < timings["device_busy"] <= 1 and timings["unit"] >= timings["lime"]
    filed = ctx.jobs.r.hgetall(RedisSizes.KEY)      # measured once, for every worker
    assert [k.split("|")[3:] for k in filed] == [["forward", chosen]] and int(next(iter(filed.values()))) >= 1
    assert ctx.jobs.stats().get("device_seconds", 0) > 0


def test_without_the_figure(settings, unit_model, digit_pngs):
    from worker.context import WorkerContext
    from worker.unit import run_unit

    quiet = WorkerContext(settings.model_copy(update={"device": "cpu", "unit_figure": False}))
    job = make_job(quiet, unit_model, digit_pngs[0][:2], {"saliency": {}})
    assert run_unit(quiet, keys.tenant, job, 0, 0, 2) == (2, 0)
    assert quiet.storage.exists(keys.item(job, 1, "saliency.png"))
    assert not quiet.storage.exists(keys.unit(job, 0, "figure.png"))


class Recording:
    """A storage that records the order of writes (and fails on request)."""

    def __init__(self, fail: str = ""):
        self.order, self.fail = [], fail

    def put(self, key, data, content_type=None):
        if key == self.fail:
            raise OSError("storage away")
        time.sleep(0.001)
        self.order.append(key)

    def put_json(self, key, obj):
        self.put(key, b"{}")


def test_the_writer_stores_in_the_background_and_stops_on_errors():
    from concurrent.futures import ThreadPoolExecutor

    from worker.unit import Writer

    st, pool = Recording(), ThreadPoolExecutor(4)
    with Writer(st, pool, limit=3) as out:     # a bounded queue: submit waits for a free slot
        for k in range(20):
            out.submit(lambda k=k: [(f"a/{k}.png", b"x"), (f"a/{k}.npy", b"y")])
        out.wait()
        out.put([(f"a/{k}/item.json", {}) for k in range(5)])
        out.wait()
    assert len(st.order) == 45 and all(k.endswith("item.json") for k in st.order[-5:])
    broken = Recording(fail="b/3.png")
    with pytest.raises(OSError):
        with Writer(broken, pool, limit=8) as out:
            out.put([(f"b/{k}.png", b"x") for k in range(6)])
            out.wait()
    assert "b/3.png" not in broken.order

"""One work unit in this process (no Celery, no API) as the broker runs it: the unit's images
read by range from a real S3 server, the model run by a real confined compute process, the
unit's shards and records written back, the job's counters in a real Redis."""
from __future__ import annotations

import hashlib
import io
import tarfile
import time
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from shared.contracts import JobManifest, UnitRecords, WorkItem
from shared.shards import InputWriter
from shared.storage import Keys, Storage

keys = Keys("unit-tests")


@pytest.fixture(scope="module")
def ctx(settings):
    from worker.context import WorkerContext

    c = WorkerContext(settings.model_copy(update={"device": "cpu", "unit_size": 0}))
    yield c
    c.compute_pool.close()


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


def make_job(ctx, model: dict, pngs: list[tuple[str, bytes]], methods: dict, bad: int | None = None,
             kind: str = "job", **manifest) -> JobManifest:
    """A job stored as the API stores one: its images in a tar shard, an index page, a manifest."""
    job = uuid.uuid4().hex
    w = InputWriter(lambda k, d: ctx.storage.put(k, d), lambda k: keys.input_shard(job, k),
                    lambda p: keys.input_index(job, p))
    for i, (name, png) in enumerate(pngs):
        w.add(name, b"not an image" if i == bad else png, ".png", label=manifest.pop(f"label{i}", None), pixels=1024)
    m = JobManifest(id=job, kind=kind, tenant=keys.tenant, model=model["name"], model_version=model["version"],
                    methods=methods, inputs=w.close(), unit_size=len(pngs), units=1, created=time.time(),
                    cost=10.0, **manifest)
    ctx.storage.put_json(keys.job(job), m.dump())
    ctx.jobs.create(job, tenant=keys.tenant, kind=kind, model=model["name"], methods=methods, total=len(pngs), units=1)
    return m


def item_of(m: JobManifest) -> WorkItem:
    return WorkItem(tenant=keys.tenant, kind=m.kind, job=m.id, unit=0, first=0, count=m.inputs.count)


def records(ctx, m: JobManifest) -> UnitRecords:
    return UnitRecords.model_validate(ctx.storage.get_json(keys.records(m.id, 0)))


def test_a_unit_writes_one_shard_per_method_and_matches_the_formula(ctx, unit_model, digit_pngs, digits_torch):
    from tests.conftest import to_model_input
    from worker.unit import Outcome, run_unit

    pngs = digit_pngs[0][:5]
    m = make_job(ctx, unit_model, pngs, {"saliency": {}, "gradcam": {}}, bad=3)
    assert run_unit(ctx, item_of(m)) == Outcome(4, 1, "")
    x = torch.tensor(np.stack([to_model_input(png) for _, png in pngs])).requires_grad_(True)
    logits = digits_torch(x)
    torch.nn.functional.cross_entropy(logits, logits.argmax(1), reduction="sum").backward()
    g = x.grad.abs().numpy()
    rec = records(ctx, m)
    maps = np.load(io.BytesIO(ctx.storage.get(rec.maps["saliency"].key)))
    assert maps.shape == (4, 1, 32, 32) and rec.maps["saliency"].rows == 4
    for it in rec.items:
        if it.index == 3:
            assert it.status == "failed" and "cannot read input" in it.error
            continue
        assert it.status == "done" and it.name == pngs[it.index][0]
        want = (g[it.index] - g[it.index].min()) / (g[it.index].max() - g[it.index].min())
        np.testing.assert_allclose(maps[it.row], want, atol=1e-5)
        span = it.pictures["gradcam"]   # one item's picture by a range read, at the input's size
        png = ctx.storage.get_range(rec.pictures["gradcam"], span.offset, span.offset + span.length)
        assert Image.open(io.BytesIO(png)).size == (32, 32)
    with tarfile.open(fileobj=io.BytesIO(ctx.storage.get(rec.pictures["saliency"]))) as t:   # a plain tar
        assert sorted(t.getnames()) == [f"{i:08d}.png" for i in (0, 1, 2, 4)]
    assert "figure.png" in rec.extras
    stored = ctx.storage.list(keys.jobs(m.id))   # manifest, records, 2 maps, 2 picture shards, extras
    assert len(stored) == 7, stored


def test_a_unit_stops_when_its_job_is_cancelled(ctx, unit_model, digit_pngs):
    from worker.unit import Cancelled, run_unit

    m = make_job(ctx, unit_model, digit_pngs[0][:2], {"saliency": {}})
    ctx.jobs.start_unit(m.id, keys.tenant, 0)
    assert ctx.jobs.cancel(m.id, keys.tenant) == "cancelling"
    with pytest.raises(Cancelled):
        run_unit(ctx, item_of(m))
    assert not ctx.storage.exists(keys.records(m.id, 0))


def test_an_audit_unit_stores_its_partial_and_the_fields_of_each_image(ctx, unit_model, digit_pngs):
    from shared.schemas import AuditOptions
    from worker.audit.aggregate import Partial
    from worker.unit import run_unit

    labels = {f"label{i}": int(lab) for i, lab in enumerate(digit_pngs[1][:3])}
    m = make_job(ctx, unit_model, digit_pngs[0][:3], {"saliency": {}}, kind="audit", pictures=False,
                 options=AuditOptions(faithfulness_steps=4).model_dump(), **labels)
    assert run_unit(ctx, item_of(m)).done == 3
    rec = records(ctx, m)
    assert rec.pictures == {} and "saliency" in rec.maps     # an audit asks for maps, not pictures
    assert [it.fields["label"] for it in rec.items] == [labels[f"label{i}"] for i in range(3)]
    assert all("faithfulness" in it.fields and "correct" in it.fields for it in rec.items)
    partial = Partial.from_bytes(ctx.storage.get(keys.audit_partial(m.id, 0)))
    assert list(partial.indices) == [0, 1, 2]


def test_a_unit_reports_its_pace_and_files_its_batch_sizes(ctx, unit_model, digit_pngs):
    from worker.unit import run_unit

    ctx.jobs.r.delete(ctx.keys.batch_sizes)
    ctx.batch_sizes.local.clear()
    ctx.compute_pool.close()       # a fresh compute process: it measures
    m = make_job(ctx, unit_model, digit_pngs[0][:4], {"lime": {"num_samples": 40, "n_segments": 12}})
    assert run_unit(ctx, item_of(m)).done == 4
    rec = records(ctx, m)
    timings, chosen = rec.timings, rec.precision["lime"]
    assert chosen in ("fp32", "bf16", "fp16")
    assert {"lime", "predict", "unit", "device_busy", "storage_requests"} <= set(timings)
    assert 0 < timings["device_busy"] <= 1 and timings["unit"] >= timings["lime"]
    assert timings["storage_requests"] <= 12   # a constant per unit (manifest, index, model and weights once, one
    #                                            ranged read, maps, pictures, extras, records), not per image
    filed = ctx.jobs.r.hgetall(ctx.keys.batch_sizes)      # measured once, for every worker
    # the prediction's forward (fp32) and LIME's scoring (its precision), each measured once for every worker
    assert sorted({tuple(k.split("|")[3:]) for k in filed}) == sorted({("forward", "fp32"), ("forward", chosen)})
    assert all(int(v) >= 1 for v in filed.values())


def test_a_rerun_replaces_the_records_and_a_half_written_run_is_never_read(ctx, unit_model, digit_pngs):
    from worker.unit import run_unit

    m = make_job(ctx, unit_model, digit_pngs[0][:2], {"saliency": {}})
    run_unit(ctx, item_of(m))
    first = records(ctx, m)
    run_unit(ctx, item_of(m))
    second = records(ctx, m)
    assert first.attempt != second.attempt and second.maps["saliency"].key.count(second.attempt) == 1
    a = np.load(io.BytesIO(ctx.storage.get(first.maps["saliency"].key)))
    b = np.load(io.BytesIO(ctx.storage.get(second.maps["saliency"].key)))
    np.testing.assert_array_equal(a, b)


def test_without_the_figure(settings, unit_model, digit_pngs):
    from worker.context import WorkerContext
    from worker.unit import run_unit

    quiet = WorkerContext(settings.model_copy(update={"device": "cpu", "unit_figure": False}))
    try:
        m = make_job(quiet, unit_model, digit_pngs[0][:2], {"saliency": {}})
        assert run_unit(quiet, item_of(m)).done == 2
        rec = records(quiet, m)
        assert "saliency" in rec.pictures and rec.extras == {}
    finally:
        quiet.compute_pool.close()


def test_the_writer_works_in_the_background_and_stops_on_errors():
    from concurrent.futures import ThreadPoolExecutor

    from worker.unit import Writer

    done, pool = [], ThreadPoolExecutor(4)
    with Writer(pool, limit=3) as out:     # a bounded queue: submit waits for a free slot
        for k in range(20):
            out.submit(lambda k=k: (time.sleep(0.001), done.append(k)))
        out.wait()
    assert sorted(done) == list(range(20))

    def fail(k):
        if k == 3:
            raise OSError("storage away")
        time.sleep(0.01)
        done.append(100 + k)
    with pytest.raises(OSError):
        with Writer(pool, limit=8) as out:
            for k in range(6):
                out.submit(fail, k)
            out.wait()
    assert 103 not in done

"""One work unit as a pipeline: the I/O threads read and decode a chunk of a job's images;
the device predicts and runs every requested method on the whole chunk as one batch; while
the next method runs, the I/O threads encode the last one's pictures and raw maps and write
them (`Writer`, a bounded queue), and render the composite figure; item.json goes last,
once everything else is stored. No Celery here, so it can be timed and tested in-process.

    run_unit -> read_batch -> predict -> explain_batch (-> Writer: each method's objects, figure)
             -> item_records (timings: seconds per step and how busy the device was)
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch

from shared.storage import Keys, Storage
from worker import explain, images, metrics, render
from worker.context import WorkerContext
from worker.explain.batching import probabilities
from worker.explain.context import RunContext, Sizer
from worker.models.loading import LoadedModel

log = logging.getLogger("xaiq.worker")
Objects = list[tuple[str, object]]   # (key, bytes or a JSON-ready dict)
NOT_FINITE = "the model's outputs for this image are not finite (NaN or infinite)"
HOST = socket.gethostname()   # once: a lookup per item cost a third of a millisecond


class Cancelled(Exception):
    """The job was cancelled while this unit ran."""


@dataclass
class Batch:
    """The decoded images of a unit that could be read."""

    indices: list[int]
    names: list[str]
    sizes: list[tuple[int, int]]
    pixels: np.ndarray          # (N, C, H, W) in [0, 1]
    errors: dict[int, str]      # index -> why it could not be read

    def only(self, rows: list[int], errors: dict[int, str]) -> "Batch":
        return replace(self, indices=[self.indices[j] for j in rows], names=[self.names[j] for j in rows],
                       sizes=[self.sizes[j] for j in rows], pixels=self.pixels[rows], errors={**self.errors, **errors})


def read_batch(ctx: WorkerContext, manifest: dict, info: dict, first: int, count: int) -> Batch:
    entries = list(enumerate(manifest["inputs"][first:first + count], start=first))

    def read(entry):
        i, inp = entry
        try:
            return i, inp["name"], *images.decode(ctx.storage.get(inp["key"]), info,
                                                  ctx.settings.max_image_pixels), None
        except Exception as e:  # noqa: BLE001 - one bad input fails one item, not the unit
            return i, inp["name"], None, None, f"cannot read input {inp['name'][:200]!r}: {type(e).__name__}"

    rows = list(ctx.io.map(read, entries))
    ok = [r for r in rows if r[4] is None]
    return Batch(
        indices=[r[0] for r in ok], names=[r[1] for r in ok], sizes=[r[3] for r in ok],
        pixels=np.stack([r[2] for r in ok]) if ok else np.zeros((0,)),
        errors={r[0]: r[4] for r in rows if r[4] is not None},
    )


def predict(lm: LoadedModel, batch: Batch) -> tuple[Batch, torch.Tensor, torch.Tensor]:
    """(the batch without images whose outputs are NaN or infinite, their inputs, probabilities)."""
    x = torch.from_numpy(images.standardize(batch.pixels, lm.info)).to(lm.device)
    probs = probabilities(lm.model, x, run=lm.run())
    finite = torch.isfinite(probs).all(1).cpu().numpy()
    if finite.all():
        return batch, x, probs
    rows = [j for j, ok in enumerate(finite) if ok]
    bad = {i: NOT_FINITE for i, ok in zip(batch.indices, finite) if not ok}
    return batch.only(rows, bad), x[rows], probs[rows]


@dataclass
class Explained:
    """What a unit computed, for callers that add to it (audits)."""

    model: LoadedModel
    batch: Batch
    inputs: torch.Tensor        # (N, C, H, W) standardised, on the device
    probabilities: torch.Tensor  # (N, classes)
    targets: torch.Tensor       # (N,)
    results: dict[str, explain.Explanation]
    timings: dict[str, float]
    run: RunContext             # how its batches ran (the audit's passes run the same way)


def explain_batch(lm: LoadedModel, batch: Batch, x: torch.Tensor, probs: torch.Tensor, methods: dict[str, dict],
                  labels: list[int] | None, check: Callable[[], None],
                  emit: Callable[[str, explain.Explanation], None] | None = None,
                  sizer: Sizer | None = None) -> Explained:
    """Run each method on the whole batch; `check` runs before each method and at every
    batch boundary inside the methods (it raises Cancelled for a cancelled job); `emit(name,
    result)` hands each result on as soon as it exists (to be stored while the next runs);
    `sizer`: the measured batch sizes (None: the defaults)."""
    targets = torch.tensor([labels[i] for i in batch.indices], device=lm.device) if labels else probs.argmax(1)
    results, timings = {}, {}
    run = lm.run(sizes=sizer, check=check)
    for name, params in methods.items():
        check()
        t0 = time.perf_counter()
        results[name] = explain.run(name, lm.model, x, targets, params, run)   # numpy: the device is done
        timings[name] = round(time.perf_counter() - t0, 4)
        if emit is not None:
            emit(name, results[name])
    return Explained(lm, batch, x, probs, targets, results, timings, run)


class Writer:
    """Encodes and writes a unit's objects in the I/O threads while the device goes on.
    `submit(fn, *args)`: fn() -> objects, encoded and written by one pool thread; at most
    `limit` tasks wait (submit blocks beyond, so memory stays bounded); `wait()` returns once
    everything submitted is stored and raises the first error. Pool threads never submit,
    so they never wait for each other. On an error (or a cancel) in the `with` block,
    tasks not started are dropped and running ones finish."""

    def __init__(self, st: Storage, pool: ThreadPoolExecutor, limit: int):
        self.st, self.pool = st, pool
        self.slots = threading.BoundedSemaphore(limit)
        self.futures: list[Future] = []

    def submit(self, fn: Callable[..., Objects], *args) -> None:
        self.slots.acquire()
        try:
            self.futures.append(self.pool.submit(self._run, fn, args))
        except BaseException:
            self.slots.release()
            raise

    def put(self, objects: Objects) -> None:
        for obj in objects:   # one task each: written in parallel
            self.submit(lambda o=obj: [o])

    def _run(self, fn, args) -> None:
        try:
            for key, value in fn(*args):
                if isinstance(value, dict):
                    self.st.put_json(key, value)
                else:
                    self.st.put(key, value, "image/png" if key.endswith(".png") else "application/octet-stream")
        finally:
            self.slots.release()

    def wait(self) -> None:
        futures, self.futures = self.futures, []
        try:
            for f in futures:
                f.result()
        except BaseException:
            self.futures = futures   # leaving the block drops the ones not started yet
            raise

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is not None:
            for f in self.futures:
                f.cancel()
            for f in self.futures:
                if not f.cancelled():
                    f.exception()   # waits; the error that ended the block is the one raised


def image_objects(keys: Keys, job: str, i: int, name: str, result: explain.Explanation, j: int,
                  size: tuple[int, int], level: int) -> Objects:
    """One image's picture of a method (at the input's size) and its raw map."""
    return [(keys.item(job, i, f"{name}.png"), images.png(result.pictures[j], size, level)),
            (keys.item(job, i, f"{name}.npy"), images.npy(result.maps[j]))]


def extra_objects(keys: Keys, job: str, unit: int, name: str, result: explain.Explanation, level: int) -> Objects:
    """A method's per-unit pictures and arrays (filter visualisations)."""
    out: Objects = []
    for extra, pictures in result.extra_pictures.items():
        out += [(keys.unit(job, unit, f"{name}-{extra}-{k}.png"), images.png(p, level=level))
                for k, p in enumerate(pictures)]
    for extra, arr in result.extras.items():
        out.append((keys.unit(job, unit, f"{name}-{extra}.npy"), images.npy(arr)))
    return out


def emit_method(out: Writer, keys: Keys, job: str, unit: int, batch: Batch, name: str,
                result: explain.Explanation, level: int) -> None:
    """Queue a method's objects: one task per image, one for the per-unit extras."""
    for j, i in enumerate(batch.indices):
        out.submit(image_objects, keys, job, i, name, result, j, batch.sizes[j], level)
    if result.extra_pictures or result.extras:
        out.submit(extra_objects, keys, job, unit, name, result, level)


def figure_objects(keys: Keys, job: str, unit: int, e: Explained, level: int) -> Objects:
    """The composite figure: the inputs over each method's pictures."""
    shown = {"input": render.input_pictures(e.batch.pixels)} | {n: r.pictures for n, r in e.results.items()}
    return [(keys.unit(job, unit, "figure.png"), render.figure(shown, e.batch.names, level=level))]


def item_records(keys: Keys, job: str, e: Explained, methods: list[str], fields: list[dict]) -> Objects:
    """item.json of each image: prediction, target, timings, and the caller's fields."""
    probs, targets, classes = e.probabilities.cpu().numpy(), e.targets.cpu().numpy(), e.model.classes
    precision = {name: r.precision for name, r in e.results.items()}   # what each method ran in
    out: Objects = []
    for j, i in enumerate(e.batch.indices):
        label = int(probs[j].argmax())
        out.append((keys.item(job, i), {
            "index": i, "name": e.batch.names[j], "status": "done", "target": int(targets[j]),
            "prediction": {"label": label, "class": classes[label],
                           "probabilities": {c: round(float(p), 6) for c, p in zip(classes, probs[j])}},
            "methods": methods, "timings": e.timings, "size": list(e.batch.sizes[j]),
            "precision": precision,
            "worker": f"{HOST}/{os.getpid()}",  # which process explained it
            **fields[j],
        }))
    return out


def failed_records(keys: Keys, job: str, manifest: dict, errors: dict[int, str]) -> Objects:
    return [(keys.item(job, i), {"index": i, "name": manifest["inputs"][i]["name"], "status": "failed", "error": err})
            for i, err in errors.items()]


def cancel_check(ctx: WorkerContext, job: str, every_s: float = 0.5) -> Callable[[], None]:
    """Raises Cancelled once the job is cancelled; asks Redis at most every `every_s`."""
    last = [0.0]

    def check():
        now = time.monotonic()
        if now - last[0] >= every_s:
            last[0] = now
            if ctx.jobs.cancelled(job):
                raise Cancelled(job)
    return check


def pace(ctx: WorkerContext, timings: dict[str, float], wall_s: float) -> dict[str, float]:
    """The unit's seconds and the fraction of them the device computed (prediction, methods,
    audit curves), counted for /metrics."""
    device_s = sum(v for k, v in timings.items() if k != "unit")
    busy = round(metrics.device_time(device_s, wall_s), 4)
    try:
        ctx.jobs.count(device_seconds=device_s, pipeline_seconds=wall_s)
    except Exception as e:  # noqa: BLE001 - a counter, never a reason to fail a unit
        log.warning("device time not counted: %r", e)
    return {"unit": round(wall_s, 4), "device_busy": busy}


def explain_unit(ctx: WorkerContext, lm: LoadedModel, keys: Keys, job: str, unit: int, manifest: dict,
                 batch: Batch, out: Writer, on_batch) -> tuple[Batch, Objects]:
    """Predict, explain (each method's objects and the figure queued on `out` as they come)
    and run the caller's hook; (the batch without non-finite images, item.json records)."""
    level = ctx.settings.png_level
    t0 = time.perf_counter()
    batch, x, probs = predict(lm, batch)
    predict_s = round(time.perf_counter() - t0, 4)
    if not batch.indices:
        return batch, []
    sizer = ctx.sizer(lm)
    e = explain_batch(lm, batch, x, probs, manifest["methods"], manifest.get("labels"), cancel_check(ctx, job),
                      emit=lambda name, r: emit_method(out, keys, job, unit, batch, name, r, level), sizer=sizer)
    if ctx.settings.unit_figure:
        out.submit(figure_objects, keys, job, unit, e, level)
    fields: list[dict] = [{} for _ in batch.indices]
    if on_batch is not None:
        t1 = time.perf_counter()
        extra, fields = on_batch(e)
        e.timings["audit"] = round(time.perf_counter() - t1, 4)
        out.put(extra)
    e.timings["predict"] = predict_s
    return batch, item_records(keys, job, e, list(manifest["methods"]), fields)


def run_unit(ctx: WorkerContext, tenant: str, job: str, unit: int, first: int, count: int,
             on_batch=None) -> tuple[int, int]:
    """Explain images first..first+count-1 of the job; returns (done, failed); every object
    is stored when it returns.

    `on_batch(explained) -> (objects, item_fields)` may add objects to store and
    fields to each image's item.json (audits add faithfulness and a partial)."""
    t0 = time.perf_counter()
    manifest, keys = ctx.manifest(tenant, job), Keys(tenant)
    lm = ctx.model(manifest)
    batch = read_batch(ctx, manifest, lm.info, first, count)
    with Writer(ctx.storage, ctx.io, 8 * ctx.settings.io_threads) as out:
        records: Objects = []
        if batch.indices:
            batch, records = explain_unit(ctx, lm, keys, job, unit, manifest, batch, out, on_batch)
        out.wait()   # item.json last: its presence means the item's files are there
        if records:
            timings = records[0][1]["timings"]   # the one dict every record of the unit shares
            timings.update(pace(ctx, timings, time.perf_counter() - t0))
        out.put(records + failed_records(keys, job, manifest, batch.errors))
        out.wait()
    return len(batch.indices), len(batch.errors)

"""One work unit, as the broker runs it (it never runs the model: the job's confined compute
process does every pass). The I/O threads read the unit's images in one or a few ranged
requests and decode them part by part (`PART` images); the compute process predicts, checks
the outputs and runs each method on a part, answering method by method; meanwhile the I/O
threads decode the next part and encode the last one's pictures. At the end each method's
maps go into one array shard and its pictures into one tar shard. `records.json` goes
last: its presence means the unit's shards are complete. A re-run writes a new attempt's
shards and then replaces records.json, so a half-written run is never visible and nothing
is counted twice. No Celery here, so it can be timed and tested in-process.

    run_unit -> fetch (one ranged GET) -> per part: decode (I/O threads) -> compute "unit"
             -> encode the part's pictures (I/O threads, while the next part computes)
             -> store_maps, pictures tars, store_extras (figure, filter visualisations) -> records.json
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np

from shared.contracts import ArrayShard, ItemRecord, JobManifest, UnitRecords, WorkItem
from shared.shards import TarShard, array_shard
from shared.storage import Keys
from worker import images, metrics, render
from worker.compute.client import Budget, ComputeFailed
from worker.context import WorkerContext
from worker.inputs import Batch, decode, fetch

log = logging.getLogger("xaiq.worker")
NOT_FINITE = "the model's outputs for this image are not finite (NaN or infinite)"
HOST = socket.gethostname()
PICTURE_CHUNK = 64          # pictures encoded per I/O task
PART = 256                  # a job's images per call to the compute process
MAX_MAP_FACTOR = 64         # a map may hold at most this many values per input value


class Cancelled(Exception):
    """The job was cancelled while this unit ran."""


@dataclass
class Outcome:
    done: int
    failed: int
    error: str = ""


class Writer:
    """Encodes and writes a unit's objects in the I/O threads while the compute process goes
    on. `submit(fn, *args)` runs fn in a pool thread; at most `limit` tasks wait (submit
    blocks beyond, so memory stays bounded); `wait()` returns once everything submitted is
    done and raises the first error. Pool threads never submit, so they never wait for each
    other. On an error (or a cancel) in the `with` block, tasks not started are dropped."""

    def __init__(self, pool: ThreadPoolExecutor, limit: int):
        self.pool = pool
        self.slots = threading.BoundedSemaphore(limit)
        self.futures: list[Future] = []

    def submit(self, fn: Callable, *args) -> Future:
        self.slots.acquire()
        try:
            f = self.pool.submit(self._run, fn, args)
        except BaseException:
            self.slots.release()
            raise
        self.futures.append(f)
        return f

    def _run(self, fn, args):
        try:
            return fn(*args)
        finally:
            self.slots.release()

    def wait(self) -> None:
        futures, self.futures = self.futures, []
        try:
            for f in futures:
                f.result()
        except BaseException:
            self.futures = futures
            raise

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is not None:
            for f in self.futures:
                f.cancel()
            for f in self.futures:
                if not f.cancelled():
                    f.exception()


def cancel_check(ctx: WorkerContext, job: str, every_s: float = 0.5) -> Callable[[], None]:
    """Raises Cancelled once the job is cancelled; asks Redis at most every `every_s`."""
    last = [0.0]

    def check():
        now = time.monotonic()
        if now - last[0] >= every_s:
            last[0] = now
            if ctx.lifecycle.cancelled(job):
                raise Cancelled(job)
    return check


class UnitResults:
    """What one run of a unit stores, as the compute process's answers arrive part by part.
    A part's answers are kept only once its `done` came (a part cut short leaves nothing)."""

    def __init__(self, ctx: WorkerContext, m: JobManifest, item: WorkItem, out: Writer):
        self.ctx, self.m, self.item, self.out = ctx, m, item, out
        self.keys = Keys(m.tenant)
        self.records = UnitRecords(unit=item.unit, first=item.first, count=item.count, attempt=uuid.uuid4().hex[:12],
                                   worker=f"{HOST}/{os.getpid()}")
        self.errors: dict[int, str] = {}
        self.names: dict[int, str] = {}
        self.done: list[tuple[int, tuple[int, int], np.ndarray, int, dict]] = []   # (index, size, probs, target, fields)
        self.maps: dict[str, list[np.ndarray]] = {}
        self.encoded: dict[str, list[Future]] = {}    # method -> its pictures' PNGs, by part, in order
        self.pictures: dict[str, dict[int, object]] = {}
        self.extra_pictures: dict[str, np.ndarray] = {}
        self.shown: dict[str, np.ndarray] = {}
        self.figure_pixels: np.ndarray | None = None
        self.figure_names: list[str] = []
        self.seconds = 0.0

    def shard_key(self, name: str) -> str:
        return self.keys.unit_shard(self.m.id, self.item.unit, self.records.attempt, name)

    def part(self, b: Batch) -> "Part":
        self.errors.update(b.errors)
        self.names.update(b.all_names)
        return Part(self, b)

    def store_maps(self) -> None:
        for name, parts in self.maps.items():
            maps = np.concatenate(parts)
            data, offset = array_shard(maps)
            key = self.shard_key(Keys.maps_name(name))
            self.ctx.storage.put(key, data)
            self.records.maps[name] = ArrayShard(key=key, shape=list(maps.shape[1:]), offset=offset, rows=len(maps))

    def store_tars(self) -> None:
        """After `Writer.wait()`: each method's encoded pictures as one tar shard."""
        kept = [index for index, *_ in self.done]
        for name, chunks in self.encoded.items():
            self.out.submit(self._tar, name, kept, [png for c in chunks for png in c.result()])

    def _tar(self, name: str, kept: list[int], pngs: list[bytes]) -> None:
        shard, spans = TarShard(), {}
        for index, png in zip(kept, pngs):
            spans[index] = shard.add(f"{index:08d}.png", png)
        key = self.shard_key(Keys.pictures_name(name))
        self.ctx.storage.put(key, shard.getvalue(), "application/x-tar")
        self.records.pictures[name] = key
        self.pictures[name] = spans

    def store_extras(self) -> None:
        """The unit's figure and per-unit pictures (filter visualisations), one tar shard."""
        shard = TarShard()
        level = self.ctx.settings.png_level
        if self.ctx.settings.unit_figure and self.shown and self.figure_pixels is not None:
            shown = {"input": render.input_pictures(self.figure_pixels)} | {n: p / 255.0 for n, p in self.shown.items()}
            self.records.extras[Keys.FIGURE] = shard.add(Keys.FIGURE, render.figure(shown, self.figure_names,
                                                                                     level=level))
        for label, pics in self.extra_pictures.items():
            method, extra = label.split(":", 1)
            for k, p in enumerate(pics):
                name = Keys.extra_name(method, extra, k)
                self.records.extras[name] = shard.add(name, images.png(p, level=level))
        if shard.members:
            key = self.shard_key(Keys.EXTRAS)
            self.ctx.storage.put(key, shard.getvalue(), "application/x-tar")
            self.records.extras_key = key


class Part:
    """One call to the compute process: a part of the unit's images and its answers."""

    def __init__(self, res: UnitResults, b: Batch):
        self.res, self.b = res, b
        self.rows: list[int] = []      # positions in `b` the compute process kept (finite outputs)
        self.maps: dict[str, np.ndarray] = {}
        self.pictures: dict[str, np.ndarray] = {}

    def predicted(self, h: dict) -> None:
        rows = [int(r) for r in h.get("rows", [])]
        if any(not 0 <= r < len(self.b.indices) for r in rows) or len(set(rows)) != len(rows):
            raise ComputeFailed("the compute process answered with rows outside the batch", killed=False)
        self.rows = rows

    def method(self, h: dict, a: dict) -> None:
        name, n, m = str(h.get("name")), len(self.rows), self.res.m
        if name not in m.methods:
            raise ComputeFailed("the compute process answered for a method it was not asked for", killed=False)
        maps = a.get("maps")
        cap = MAX_MAP_FACTOR * int(np.prod(self.b.pixels.shape[1:]))
        if maps is None or maps.dtype != np.float32 or maps.shape[:1] != (n,) or maps[:1].size > cap:
            raise ComputeFailed(f"the compute process sent maps of the wrong shape for {name}", killed=False)
        pics = a.get("pictures")
        if m.pictures and pics is not None and (pics.dtype != np.uint8 or pics.ndim != 4 or pics.shape[0] != n
                                                or pics.shape[3] != 3):
            raise ComputeFailed(f"the compute process sent pictures of the wrong shape for {name}", killed=False)
        self.res.records.precision[name] = str(h.get("precision", "fp32"))[:8]
        if h.get("guard"):   # the precision guard's verdict, whether or not it decided the precision
            self.res.records.precision_guard[name] = str(h["guard"])[:400]
        self.res.seconds += float(h.get("seconds") or 0)
        self.maps[name] = maps
        if m.pictures and pics is not None:
            self.pictures[name] = pics
        for k, v in a.items():
            if k.startswith("extra_picture:") and v.dtype == np.uint8 and v.ndim == 4 and v.shape[3] == 3:
                self.res.extra_pictures[f"{name}:{k.split(':', 1)[1]}"] = v

    def done(self, h: dict, a: dict, k: int) -> None:
        """Check the part's predictions, then keep everything it answered (pictures encoded now,
        in the I/O threads, while the compute process takes the next part)."""
        res, n = self.res, len(self.rows)
        probs, targets = a.get("probs"), a.get("targets")
        if probs is None or probs.shape != (n, k) or targets is None or targets.shape != (n,) \
                or not np.isfinite(probs).all() or ((targets < 0) | (targets >= k)).any():
            raise ComputeFailed("the compute process sent predictions of the wrong shape", killed=False)
        if set(self.maps) != set(res.m.methods) and n:
            raise ComputeFailed("the compute process left out a method", killed=False)
        fields = [f if isinstance(f, dict) else {} for f in (h.get("fields") or [])] or [{}] * n
        if res.m.kind == "audit" and n:
            if "partial" not in a or len(fields) != n:
                raise ComputeFailed("the compute process sent no audit partial", killed=False)
            res.out.submit(res.ctx.storage.put, Keys(res.m.tenant).audit_partial(res.m.id, res.item.unit),
                           a["partial"].tobytes())
        res.done += [(self.b.indices[r], self.b.sizes[r], probs[j], int(targets[j]), fields[j])
                     for j, r in enumerate(self.rows)]
        for name, maps in self.maps.items():
            res.maps.setdefault(name, []).append(maps)
        self.encode()
        res.ctx.batch_sizes.file({str(key): int(v) for key, v in (h.get("sizes") or {}).items()
                                  if isinstance(v, int) and 0 < v <= 1 << 20})
        for key, v in (h.get("timings") or {}).items():
            res.records.timings[str(key)] = round(res.records.timings.get(str(key), 0.0) + float(v), 4)

    def encode(self) -> None:
        res, level = self.res, self.res.ctx.settings.png_level
        sizes = [self.b.sizes[r] for r in self.rows]
        for name, pics in self.pictures.items():
            chunks = res.encoded.setdefault(name, [])
            for s0 in range(0, len(pics), PICTURE_CHUNK):
                chunks.append(res.out.submit(lambda s0=s0, pics=pics: [
                    images.png(pics[j], sizes[j], level) for j in range(s0, min(s0 + PICTURE_CHUNK, len(pics)))]))
            if res.figure_pixels is None:
                res.shown[name] = pics[:8]
        if res.figure_pixels is None and self.pictures:
            res.figure_pixels = self.b.pixels[self.rows[:8]]
            res.figure_names = [self.b.names[r] for r in self.rows[:8]]


def prediction(probs: np.ndarray, classes: list[str]) -> dict:
    label = int(probs.argmax())
    return {"label": label, "class": classes[label],
            "probabilities": {c: round(float(p), 6) for c, p in zip(classes, probs)}}


def item_records(res: UnitResults, classes: list[str], error: str | None) -> list[ItemRecord]:
    """One record per image of the unit: done (its prediction and where its results lie) or failed."""
    done = {index: (row, size, probs, target, fields) for row, (index, size, probs, target, fields)
            in enumerate(res.done)}
    out = []
    for i in range(res.item.first, res.item.first + res.item.count):
        name = res.names.get(i, "")
        if i in done:
            row, size, probs, target, fields = done[i]
            out.append(ItemRecord(
                index=i, name=name, status="done", target=target, prediction=prediction(probs, classes),
                size=list(size), row=row, pictures={m: spans[i] for m, spans in res.pictures.items() if i in spans},
                fields=fields))
        else:
            reason = res.errors.get(i) or (error if error else NOT_FINITE)
            out.append(ItemRecord(index=i, name=name, status="failed", error=reason[:500]))
    return out


def part_size(m: JobManifest) -> int:
    """Images per call to the compute process: an audit's unit in one (one partial per unit),
    a job's in parts, so that decoding the next part and encoding the last one's pictures
    overlap the model's work."""
    return m.inputs.count if m.kind == "audit" else PART


def explain_part(ctx: WorkerContext, m: JobManifest, part: Part, compute, budget: Budget, k: int) -> None:
    b = part.b
    header = {"op": "unit", "methods": m.methods, "pictures": m.pictures,
              "targets": b.labels if m.kind == "job" and any(t is not None for t in b.labels) else None,
              "audit": {"options": m.options, "truth": b.labels, "indices": b.indices, "images": m.inputs.count}
              if m.kind == "audit" else None}
    check = cancel_check(ctx, m.id, every_s=0.0)
    check()
    for h, a in compute.call(header, {"pixels": b.pixels}, budget, check=cancel_check(ctx, m.id)):
        check()    # between answers too: a quick part never waits long enough to be asked
        if h["kind"] == "predicted":
            part.predicted(h)
        elif h["kind"] == "method":
            part.method(h, a)
        else:
            return part.done(h, a, k)
    raise ComputeFailed("the compute process stopped before it was done", killed=True)


def explain_unit(ctx: WorkerContext, m: JobManifest, res: UnitResults, info: dict) -> None:
    """The unit's images read in one or a few requests, decoded part by part in the I/O
    threads, each part explained by the compute process as soon as it is decoded."""
    raws = fetch(ctx, m, list(range(res.item.first, res.item.first + res.item.count)))
    size = part_size(m)
    decoded = [ctx.io.submit(decode, raws[i:i + size], info, ctx.settings.max_image_pixels)
               for i in range(0, len(raws), size)]
    unit = ctx.unit_budget(m)
    compute = None
    for fut in decoded:
        b = fut.result()
        part = res.part(b)
        if b.indices:
            compute = compute or ctx.compute(m)
            budget = Budget(unit.seconds * max(len(b.indices) / max(res.item.count, 1), 0.25), unit.memory_mb)
            explain_part(ctx, m, part, compute, budget, len(info["classes"]))


def run_unit(ctx: WorkerContext, item: WorkItem) -> Outcome:
    """Explain images first..first+count-1 of the job; every object is stored when it returns.
    Raises Cancelled when the job was cancelled meanwhile (its compute process killed)."""
    t0, requests0 = time.perf_counter(), ctx.storage.requests
    m = ctx.manifest(item.tenant, item.job)
    info = ctx.model_info(m)
    error = ""
    with Writer(ctx.io, 8 * ctx.settings.io_threads) as out:
        res = UnitResults(ctx, m, item, out)
        try:
            explain_unit(ctx, m, res, info)
        except ComputeFailed as e:
            error = e.reason
            log.warning("job %s unit %d: %s", m.id, item.unit, e.reason)
        out.submit(res.store_maps)
        out.wait()   # every picture is encoded: the tars can be written
        res.store_tars()
        out.submit(res.store_extras)
        out.wait()
        res.records.items = item_records(res, info["classes"], error)
        computed = res.seconds + res.records.timings.get("predict", 0.0) + res.records.timings.get("audit", 0.0)
        res.records.timings.update(pace(ctx, computed,
                                        time.perf_counter() - t0, ctx.storage.requests - requests0 + 1))
        ctx.storage.put(Keys(m.tenant).records(m.id, item.unit), res.records.model_dump_json(exclude_none=True).encode(),
                        "application/json")
    ok = sum(1 for r in res.records.items if r.status == "done")
    return Outcome(ok, item.count - ok, error)


def pace(ctx: WorkerContext, device_s: float, wall_s: float, requests: int) -> dict[str, float]:
    """The unit's seconds, the fraction of them the compute process computed, and its storage
    requests, counted for /metrics."""
    busy = round(metrics.device_time(device_s, wall_s), 4)
    try:
        ctx.jobs.count(device_seconds=device_s, pipeline_seconds=wall_s, storage_requests=requests)
    except Exception as e:  # noqa: BLE001 - a counter, never a reason to fail a unit
        log.warning("unit time not counted: %r", e)
    return {"unit": round(wall_s, 4), "device_busy": busy, "storage_requests": requests}


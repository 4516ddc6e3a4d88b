"""One work unit: read a chunk of a job's images, run every requested method on the
whole chunk as one batch, write pictures, raw maps and item.json. No Celery here, so
it can be timed and tested in-process.

    run_unit -> read_batch -> predict -> explain_batch -> method_outputs + item_records -> write_all
"""
from __future__ import annotations

import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch

from shared.storage import Keys, Storage
from worker import explain, images, render
from worker.context import WorkerContext
from worker.explain.batching import checkpoints, probabilities
from worker.models.loading import LoadedModel

log = logging.getLogger("xaiq.worker")
Objects = list[tuple[str, object]]   # (key, bytes or a JSON-ready dict)
NOT_FINITE = "the model's outputs for this image are not finite (NaN or infinite)"


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
    probs = probabilities(lm.model, x)
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


def explain_batch(lm: LoadedModel, batch: Batch, x: torch.Tensor, probs: torch.Tensor, methods: dict[str, dict],
                  labels: list[int] | None, check: Callable[[], None]) -> Explained:
    """Run each method on the whole batch; `check` runs before each method and at every
    batch boundary inside the methods (it raises Cancelled for a cancelled job)."""
    targets = torch.tensor([labels[i] for i in batch.indices], device=lm.device) if labels else probs.argmax(1)
    results, timings = {}, {}
    with checkpoints(check):
        for name, params in methods.items():
            check()
            t0 = time.perf_counter()
            results[name] = explain.run(name, lm.model, x, targets, params)
            timings[name] = round(time.perf_counter() - t0, 4)
    return Explained(lm, batch, x, probs, targets, results, timings)


def method_outputs(keys: Keys, job: str, unit: int, e: Explained) -> Objects:
    """Per image and method a picture (at the input's size) and the raw map; per unit the
    extra pictures and arrays, and the composite figure."""
    out: Objects = []
    for name, result in e.results.items():
        for j, i in enumerate(e.batch.indices):
            out.append((keys.item(job, i, f"{name}.png"), images.png(result.pictures[j], e.batch.sizes[j])))
            out.append((keys.item(job, i, f"{name}.npy"), images.npy(result.maps[j])))
        for extra, pictures in result.extra_pictures.items():
            out += [(keys.unit(job, unit, f"{name}-{extra}-{k}.png"), images.png(p)) for k, p in enumerate(pictures)]
        for extra, arr in result.extras.items():
            out.append((keys.unit(job, unit, f"{name}-{extra}.npy"), images.npy(arr)))
    shown = {"input": render.input_pictures(e.batch.pixels)} | {n: r.pictures for n, r in e.results.items()}
    out.append((keys.unit(job, unit, "figure.png"), render.figure(shown, e.batch.names)))
    return out


def item_records(keys: Keys, job: str, e: Explained, methods: list[str], fields: list[dict]) -> Objects:
    """item.json of each image: prediction, target, timings, and the caller's fields."""
    probs, targets, classes = e.probabilities.cpu().numpy(), e.targets.cpu().numpy(), e.model.classes
    out: Objects = []
    for j, i in enumerate(e.batch.indices):
        label = int(probs[j].argmax())
        out.append((keys.item(job, i), {
            "index": i, "name": e.batch.names[j], "status": "done", "target": int(targets[j]),
            "prediction": {"label": label, "class": classes[label],
                           "probabilities": {c: round(float(p), 6) for c, p in zip(classes, probs[j])}},
            "methods": methods, "timings": e.timings, "size": list(e.batch.sizes[j]),
            "worker": f"{socket.gethostname()}/{os.getpid()}",  # which process explained it
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


def run_unit(ctx: WorkerContext, tenant: str, job: str, unit: int, first: int, count: int,
             on_batch=None) -> tuple[int, int]:
    """Explain images first..first+count-1 of the job; returns (done, failed).

    `on_batch(explained) -> (objects, item_fields)` may add objects to store and
    fields to each image's item.json (audits add faithfulness and a partial)."""
    manifest, keys = ctx.manifest(tenant, job), Keys(tenant)
    lm = ctx.model(manifest)
    batch = read_batch(ctx, manifest, lm.info, first, count)
    objects: Objects = []
    if batch.indices:
        batch, x, probs = predict(lm, batch)
    if batch.indices:
        e = explain_batch(lm, batch, x, probs, manifest["methods"], manifest.get("labels"), cancel_check(ctx, job))
        objects = method_outputs(keys, job, unit, e)
        fields: list[dict] = [{} for _ in batch.indices]
        if on_batch is not None:
            extra, fields = on_batch(e)
            objects += extra
        objects.append(None)   # item.json last: its presence means the item's files are there
        objects += item_records(keys, job, e, list(manifest["methods"]), fields)
    write_all(ctx.storage, objects + failed_records(keys, job, manifest, batch.errors), ctx.io)
    return len(batch.indices), len(batch.errors)


def write_all(st: Storage, objects: list, pool: ThreadPoolExecutor) -> None:
    """Write objects in parallel; a None in the list waits for everything before it."""
    def write(obj):
        key, value = obj
        if isinstance(value, dict):
            st.put_json(key, value)
        else:
            st.put(key, value, "image/png" if key.endswith(".png") else "application/octet-stream")

    start = 0
    for end in [j for j, o in enumerate(objects) if o is None] + [len(objects)]:
        list(pool.map(write, objects[start:end]))
        start = end + 1

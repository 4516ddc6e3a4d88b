"""One work unit: read a chunk of a job's images, run every requested method on the
whole chunk as one batch, write pictures, raw maps and item.json. No Celery here, so
it can be timed and tested in-process.

    run_unit -> read_batch -> explain_batch -> method_outputs + item_records -> write_all
"""
from __future__ import annotations

import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from shared.storage import Storage, keys, record_final
from worker import explain, images, render
from worker.context import WorkerContext
from worker.explain.batching import probabilities
from worker.models.loading import LoadedModel

log = logging.getLogger("xaiq.worker")
Objects = list[tuple[str, object]]   # (key, bytes or a JSON-ready dict)


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


def read_batch(ctx: WorkerContext, manifest: dict, info: dict, first: int, count: int) -> Batch:
    entries = list(enumerate(manifest["inputs"][first:first + count], start=first))

    def read(entry):
        i, inp = entry
        try:
            return i, inp["name"], *images.decode(ctx.storage.get(inp["key"]), info,
                                                  ctx.settings.max_image_pixels), None
        except Exception as e:  # noqa: BLE001 - one bad input fails one item, not the unit
            return i, inp["name"], None, None, f"cannot read input {inp['key']!r}: {type(e).__name__}: {e}"

    rows = list(ctx.io.map(read, entries))
    ok = [r for r in rows if r[4] is None]
    return Batch(
        indices=[r[0] for r in ok], names=[r[1] for r in ok], sizes=[r[3] for r in ok],
        pixels=np.stack([r[2] for r in ok]) if ok else np.zeros((0,)),
        errors={r[0]: r[4] for r in rows if r[4] is not None},
    )


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


def explain_batch(lm: LoadedModel, batch: Batch, methods: dict[str, dict], labels: list[int] | None,
                  cancelled: Callable[[], bool]) -> Explained:
    """Predict, then run each method on the whole batch (checking for a cancel between methods)."""
    x = torch.from_numpy(images.standardize(batch.pixels, lm.info)).to(lm.device)
    probs = probabilities(lm.model, x)
    targets = torch.tensor([labels[i] for i in batch.indices], device=lm.device) if labels else probs.argmax(1)
    results, timings = {}, {}
    for name, params in methods.items():
        if cancelled():
            raise Cancelled()
        t0 = time.perf_counter()
        results[name] = explain.run(name, lm.model, x, targets, params)
        timings[name] = round(time.perf_counter() - t0, 4)
    return Explained(lm, batch, x, probs, targets, results, timings)


def method_outputs(job: str, unit: int, e: Explained) -> Objects:
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


def item_records(job: str, e: Explained, methods: list[str], fields: list[dict]) -> Objects:
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


def failed_records(job: str, manifest: dict, errors: dict[int, str]) -> Objects:
    return [(keys.item(job, i), {"index": i, "name": manifest["inputs"][i]["name"], "status": "failed", "error": err})
            for i, err in errors.items()]


def run_unit(ctx: WorkerContext, job: str, unit: int, first: int, count: int,
             on_batch=None) -> tuple[int, int]:
    """Explain images first..first+count-1 of the job; returns (done, failed).

    `on_batch(explained) -> (objects, item_fields)` may add objects to store and
    fields to each image's item.json (audits add faithfulness and a partial)."""
    manifest = ctx.manifest(job)
    lm = ctx.model(manifest["model"])
    batch = read_batch(ctx, manifest, lm.info, first, count)
    objects, items = [], failed_records(job, manifest, batch.errors)
    if batch.indices:
        e = explain_batch(lm, batch, manifest["methods"], manifest.get("labels"), lambda: ctx.jobs.cancelled(job))
        objects = method_outputs(job, unit, e)
        fields: list[dict] = [{} for _ in batch.indices]
        if on_batch is not None:
            extra, fields = on_batch(e)
            objects += extra
        items += item_records(job, e, list(manifest["methods"]), fields)
    write_all(ctx.storage, objects, ctx.io)
    write_all(ctx.storage, items, ctx.io)  # item.json last: its presence means the item's files are there
    return len(batch.indices), len(batch.errors)


def write_all(st: Storage, objects: Objects, pool: ThreadPoolExecutor) -> None:
    def write(obj):
        key, value = obj
        if isinstance(value, dict):
            st.put_json(key, value)
        else:
            st.put(key, value, "image/png" if key.endswith(".png") else "application/octet-stream")

    list(pool.map(write, objects))


def finish_job(ctx: WorkerContext, job: str, outcome: str) -> None:
    """After the last unit: the final status in Redis and in the manifest."""
    state = ctx.jobs.get(job)
    if outcome == "complete":
        ctx.jobs.set_final(job, "failed" if state["progress"]["failed"] else "succeeded")
        state = ctx.jobs.get(job)
    record_final(ctx.storage, state)
    log.info("job %s %s: %s", job, state["status"], state["progress"])

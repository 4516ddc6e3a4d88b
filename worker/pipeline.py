"""One work unit: read a chunk of a job's images, run every requested method on the
whole chunk as one batch, write pictures, raw maps and item.json. No Celery here, so
it can be timed and tested in-process."""
from __future__ import annotations

import logging
import os
import socket
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from shared import storage as keys
from shared.jobs import JobStore
from shared.settings import Settings
from shared.storage import Storage, storage
from worker import explain, images, render
from worker.models.loading import LoadedModel, ModelCache, pick_device

log = logging.getLogger("xaiq.worker")


class Cancelled(Exception):
    """The job was cancelled while this unit ran."""


@dataclass
class WorkerContext:
    """What a worker process keeps between units."""

    settings: Settings
    manifests: OrderedDict = field(default_factory=OrderedDict)
    pid: int = field(default_factory=os.getpid)  # a forked child builds its own

    @property
    def storage(self) -> Storage:
        return storage(self.settings)

    @cached_property
    def jobs(self) -> JobStore:
        return JobStore(self.settings)

    @cached_property
    def device(self) -> torch.device:
        return pick_device(self.settings.device)

    @cached_property
    def models(self) -> ModelCache:
        return ModelCache(self.settings.model_cache_size)

    @cached_property
    def io(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(8, thread_name_prefix="xaiq-io")

    def manifest(self, job: str) -> dict:
        if job not in self.manifests:
            self.manifests[job] = self.storage.get_json(keys.job_key(job))
            while len(self.manifests) > 32:
                self.manifests.popitem(last=False)
        return self.manifests[job]

    def model(self, name: str) -> LoadedModel:
        return self.models.get(self.storage, name, self.device)


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


def predict(model: torch.nn.Module, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(c).float().softmax(1) for c in x.split(chunk)])


@dataclass
class Explained:
    """What a unit computed, for callers that add to it (audits)."""

    model: LoadedModel
    batch: Batch
    inputs: torch.Tensor        # (N, C, H, W) normalised, on the device
    probabilities: torch.Tensor  # (N, classes)
    targets: torch.Tensor       # (N,)
    results: dict[str, explain.Explanation]


def run_unit(ctx: WorkerContext, job: str, unit: int, first: int, count: int,
             on_batch=None) -> tuple[int, int]:
    """Explain images first..first+count-1 of the job; returns (done, failed).

    `on_batch(explained) -> (objects, item_fields)` may add objects to store and
    fields to each image's item.json (audits add faithfulness and a partial)."""
    manifest = ctx.manifest(job)
    lm = ctx.model(manifest["model"])
    batch = read_batch(ctx, manifest, lm.info, first, count)
    st, put = ctx.storage, []

    for i, err in batch.errors.items():
        put.append((f"{keys.item_prefix(job, i)}/item.json", {"index": i, "name": manifest["inputs"][i]["name"],
                                                                "status": "failed", "error": err}))
    if batch.indices:
        x = torch.from_numpy(images.normalise(batch.pixels, lm.info)).to(lm.device)
        probs = predict(lm.model, x)
        given = manifest.get("labels")
        targets = torch.tensor([given[i] for i in batch.indices], device=lm.device) if given \
            else probs.argmax(1)
        timings, shown, results = {}, {"input": render.input_pictures(batch.pixels)}, {}
        for name, params in manifest["methods"].items():
            if ctx.jobs.cancelled(job):
                raise Cancelled(job)
            t0 = time.perf_counter()
            result = explain.run(name, lm.model, x, targets, params)
            timings[name] = round(time.perf_counter() - t0, 4)
            shown[name], results[name] = result.pictures, result
            for j, i in enumerate(batch.indices):
                prefix = keys.item_prefix(job, i)
                put.append((f"{prefix}/{name}.png", images.png(result.pictures[j], batch.sizes[j])))
                put.append((f"{prefix}/{name}.npy", images.npy(result.maps[j])))
            for extra, pictures in result.extra_pictures.items():
                for k, picture in enumerate(pictures):
                    put.append((f"{keys.unit_prefix(job, unit)}/{name}-{extra}-{k}.png", images.png(picture)))
            for extra, arr in result.extras.items():
                put.append((f"{keys.unit_prefix(job, unit)}/{name}-{extra}.npy", images.npy(arr)))
        put.append((f"{keys.unit_prefix(job, unit)}/figure.png", render.figure(shown, batch.names)))
        fields: list[dict] = [{} for _ in batch.indices]
        if on_batch is not None:
            objects, fields = on_batch(Explained(lm, batch, x, probs, targets, results))
            put.extend(objects)
        probs_cpu, targets_cpu = probs.cpu().numpy(), targets.cpu().numpy()
        items = []
        for j, i in enumerate(batch.indices):
            label = int(probs_cpu[j].argmax())
            items.append((f"{keys.item_prefix(job, i)}/item.json", {
                "index": i, "name": batch.names[j], "status": "done", "target": int(targets_cpu[j]),
                "prediction": {"label": label, "class": lm.classes[label],
                               "probabilities": {c: round(float(p), 6) for c, p in zip(lm.classes, probs_cpu[j])}},
                "methods": list(manifest["methods"]), "timings": timings, "size": list(batch.sizes[j]),
                "worker": f"{socket.gethostname()}/{os.getpid()}",  # which process explained it
                **fields[j],
            }))
    else:
        items = []
    write_all(st, put, ctx.io)
    write_all(st, items, ctx.io)  # item.json last: its presence means the item's files are there
    return len(batch.indices), len(batch.errors)


def write_all(st: Storage, objects: list[tuple[str, object]], pool: ThreadPoolExecutor) -> None:
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
    keys.record_final(ctx.storage, state)
    log.info("job %s %s: %s", job, state["status"], state["progress"])

"""Submitting a job or an audit: everything checked (intake), then the inputs stored, the
manifest written, the job recorded within the tenant's limits, its units queued."""
from __future__ import annotations

import math
import time

from api import auth, clients, datasets, intake
from api.errors import ApiError
from shared.jobs import LimitExceeded
from shared.schemas import valid_path
from shared.storage import Keys


def sizing(n: int, unit_size: int | None) -> tuple[int, int]:
    """(images per unit, units) of a job of n images."""
    size = unit_size or clients.get().settings.unit_size
    return size, max(1, math.ceil(n / size))


def record_and_queue(job: str, *, kind: str, info: dict, scope: str, methods: dict, inputs: list[dict],
                     unit_size: int | None, gflop: float, limits: dict, manifest: dict) -> None:
    c, tenant = clients.get(), auth.current().tenant
    size, units = sizing(len(inputs), unit_size)
    keys = Keys(tenant)
    c.storage.put_json(keys.job(job), {
        **manifest, "id": job, "kind": kind, "tenant": tenant, "model": info["name"], "model_version": info["version"],
        "model_scope": scope, "methods": methods, "inputs": inputs, "unit_size": size, "units": units,
        "created": time.time(), "cost": gflop,
    })
    try:
        c.jobs.create(job, tenant=tenant, kind=kind, model=info["name"], model_version=info["version"],
                      methods=methods, total=len(inputs), units=units, name=manifest.get("name"), gflop=gflop,
                      limits={"jobs": limits["max_tenant_jobs"], "units": limits["max_tenant_units"],
                              "gflop": limits["max_tenant_gflop"]})
    except LimitExceeded as e:
        intake.remove([keys.job(job)] + [i["key"] for i in inputs if i["key"].startswith(keys.inputs(job))])
        intake.too_busy(e)
    c.enqueue(tenant, [{"tenant": tenant, "kind": kind, "job": job, "unit": u, "first": u * size,
                        "count": min(size, len(inputs) - u * size)} for u in range(units)])


def plan(spec, info: dict, n: int, options: dict | None = None) -> tuple[float, dict]:
    """(estimated GFLOP, the tenant's limits) of a job of n images; 4xx if too much."""
    intake.check_count(n, "an audit" if options is not None else "a job")
    _, units = sizing(n, spec.unit_size)
    gflop = intake.estimate(spec.methods, info, n, units, options)
    return gflop, intake.admit_cost(gflop, units)


def submit_job(spec, files) -> tuple[str, float, float]:
    """A job from uploaded files or from `inputs` paths; returns (id, estimate, limit)."""
    if files and spec.inputs:
        raise ApiError(400, "give images as files or as 'inputs' paths, not both")
    info, scope = intake.ready_model(spec.model)
    intake.check_methods(spec.methods, info)
    n = len(files) if files else len(spec.inputs or [])
    if n == 0:
        raise ApiError(400, "no images: attach PNG/JPEG files (multipart) or list 'inputs' paths (JSON)")
    gflop, limits = plan(spec, info, n)
    labels = intake.resolve_labels(spec.labels, n, info["classes"])
    job, keys = intake.new_id(), Keys(auth.current().tenant)
    if files:
        names = [(f.filename or f"image-{i}")[:200] for i, f in enumerate(files)]
        stored = intake.store_checked(((name, f.read) for name, f in zip(names, files)),
                                      lambda i, _: keys.input(job, i))
        inputs = [{"name": name, "key": key} for name, key in zip(names, stored)]
    else:
        inputs = intake.upload_keys(spec.inputs)
    record_and_queue(job, kind="job", info=info, scope=scope, methods=spec.methods, inputs=inputs,
                     unit_size=spec.unit_size, gflop=gflop, limits=limits, manifest={"name": spec.name, "labels": labels})
    return job, gflop, limits["max_job_gflop"]


def audit_inputs(spec, upload, classes: list[str], keys: Keys) -> tuple[list, list[int], object]:
    """(entries, class indices, how to store them): a zip's entries, or a folder of uploads."""
    c = clients.get()
    if upload is not None:
        entries, z = datasets.zip_entries(upload.stream, 4 * c.settings.max_upload_mb * 2**20)
    else:
        entries, z = datasets.upload_entries(c.storage, keys, spec.dataset), None
    intake.check_count(len(entries), "an audit")
    return entries, [datasets.class_index(folder, classes) for folder, _, _ in entries], z


def submit_audit(spec, upload) -> tuple[str, float, float]:
    """An audit of an uploaded zip or a folder of the tenant's uploads; returns (id, estimate, limit)."""
    if (upload is None) == (spec.dataset is None):
        raise ApiError(400, "give the dataset as a 'dataset' zip file (multipart) or as a 'dataset' folder of "
                            "your uploads (JSON)")
    if spec.dataset is not None and not valid_path(spec.dataset.strip("/")):
        raise ApiError(422, "dataset: a folder of your uploads, like 'sets/val' (letters, digits, '.', '_', '-')")
    info, scope = intake.ready_model(spec.model)
    intake.check_methods(spec.methods, info)
    audit, keys = intake.new_id(), Keys(auth.current().tenant)
    entries, labels, z = audit_inputs(spec, upload, info["classes"], keys)
    options = spec.options.model_dump()
    gflop, limits = plan(spec, info, len(entries), options)
    names = [f"{folder}/{name}" for folder, name, _ in entries]
    if z is not None:
        stored = intake.store_checked(((n, lambda e=e: datasets.read_entry(z, e[2])) for n, e in zip(names, entries)),
                                      lambda i, _: keys.input(audit, i))
    else:
        stored = [key for _, _, key in entries]
    record_and_queue(audit, kind="audit", info=info, scope=scope, methods=spec.methods,
                     inputs=[{"name": n, "key": k} for n, k in zip(names, stored)], unit_size=spec.unit_size,
                     gflop=gflop, limits=limits, manifest={"name": spec.name, "truth": labels, "options": options})
    return audit, gflop, limits["max_job_gflop"]

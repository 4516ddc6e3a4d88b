"""Turning a request into a job or an audit: read the spec and the files, check them
against the registry and the model's manifest, store the inputs, write the manifest,
record the job, enqueue its units. Everything is checked before anything is stored."""
from __future__ import annotations

import io
import json
import math
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from flask import request
from PIL import Image, UnidentifiedImageError

from api import clients, datasets, records
from api.errors import ApiError
from shared import methods as registry
from shared.messaging import AUDIT_UNIT, EXPLAIN_UNIT
from shared.storage import keys

FORMATS = {"PNG", "JPEG", "MPO"}  # MPO: the multi-picture JPEG of phone cameras


def new_id() -> str:
    return uuid.uuid4().hex


def read_spec(model):
    """The spec (validated by the pydantic `model`) from a multipart field `spec` or a
    JSON body, plus the uploaded files."""
    if request.mimetype == "multipart/form-data":
        raw = request.form.get("spec")
        if raw is None:
            raise ApiError(400, "multipart requests need a form field 'spec' holding the JSON spec")
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ApiError(400, f"the 'spec' field is not valid JSON: {e}") from None
        files = [f for key in request.files for f in request.files.getlist(key)]
    else:
        body = request.get_json(silent=True)
        if body is None:
            raise ApiError(400, "send multipart/form-data with images and a 'spec' field, or a JSON body")
        files = []
    if not isinstance(body, dict):
        raise ApiError(400, "the spec must be a JSON object")
    return model.model_validate(body), files


def check_image(name: str, data: bytes, max_pixels: int) -> bytes:
    """The image as PNG bytes (PNG inputs are kept as they are); 4xx on a bad one."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in FORMATS:
                raise ApiError(415, f"{name}: {img.format} images are not accepted; send PNG or JPEG")
            w, h = img.size
            if w * h > max_pixels:
                raise ApiError(413, f"{name}: {w}x{h} is larger than the limit of {max_pixels} pixels")
            img.load()
            if img.format == "PNG":
                return data
            if img.mode not in ("L", "RGB", "RGBA", "LA"):  # CMYK, YCbCr, ... have no PNG form
                img = img.convert("RGB")
            buf = io.BytesIO()
            img.save(buf, "PNG")
            return buf.getvalue()
    except Image.DecompressionBombError as e:
        raise ApiError(413, f"{name}: too many pixels ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ApiError(400, f"{name}: not a readable PNG or JPEG image ({e})") from None


def read_uploads(files) -> list[tuple[str, bytes]]:
    limit = clients.get().settings.max_image_pixels
    return [(f.filename or f"image-{i}", check_image(f.filename or f"image-{i}", f.read(), limit))
            for i, f in enumerate(files)]


def check_count(n: int, what: str = "a job") -> None:
    limit = clients.get().settings.max_images_per_job
    if n > limit:
        raise ApiError(413, f"{n} images; {what} takes at most {limit}")


def ready_model(name: str) -> dict:
    info = records.model_manifest(name)
    if info["status"] != "ready":
        raise ApiError(409, f"model {name!r} is {info['status']}" + (f": {info['error']}" if info.get("error") else ""))
    return info


def check_methods(methods: dict[str, dict], info: dict) -> None:
    """Each method's own rules (layers, filters, hooks) against the model's manifest."""
    for name, params in methods.items():
        try:
            registry.get(name).check(params, info)
        except ValueError as e:
            raise ApiError(422, str(e)) from None


def resolve_labels(labels: list | None, n: int, classes: list[str]) -> list[int] | None:
    if labels is None:
        return None
    if len(labels) != n:
        raise ApiError(422, f"labels: {len(labels)} given for {n} images; give one per image or none")
    out = []
    for i, lab in enumerate(labels):
        if isinstance(lab, str) and lab in classes:
            out.append(classes.index(lab))
        elif isinstance(lab, int) and 0 <= lab < len(classes):
            out.append(lab)
        else:
            raise ApiError(422, f"labels[{i}]: {lab!r} is not a class index 0..{len(classes) - 1} or a class name")
    return out


def store_uploads(job: str, uploads: list[tuple[str, bytes]]) -> list[dict]:
    st = clients.get().storage
    inputs = [{"name": name, "key": keys.input(job, i)} for i, (name, _) in enumerate(uploads)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda a: st.put(a[0]["key"], a[1][1], "image/png"), zip(inputs, uploads)))
    return inputs


def valid_key(key: str) -> bool:
    parts = key.split("/")
    return bool(key) and len(key) <= 1024 and not key.startswith("/") and ".." not in parts and "" not in parts


def check_keys(inputs: list[str]) -> list[dict]:
    bad = [k for k in inputs if not valid_key(k)]
    if bad:
        raise ApiError(422, f"inputs: {len(bad)} invalid key(s): keys are 'folder/name.png' paths in the bucket", bad[:20])
    st = clients.get().storage
    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(st.exists, inputs))
    missing = [k for k, ok in zip(inputs, found) if not ok]
    if missing:
        raise ApiError(422, f"inputs: {len(missing)} key(s) not in bucket {st.bucket!r}", missing[:20])
    return [{"name": k.rsplit("/", 1)[-1], "key": k} for k in inputs]


def enqueue(job: str, *, kind: str, task: str, model: str, methods: dict, inputs: list[dict],
            unit_size: int | None, manifest: dict) -> None:
    c = clients.get()
    size = unit_size or c.settings.unit_size
    units = max(1, math.ceil(len(inputs) / size))
    c.storage.put_json(keys.job(job), {
        **manifest, "id": job, "kind": kind, "model": model, "methods": methods,
        "inputs": inputs, "unit_size": size, "units": units, "created": time.time(),
    })
    c.jobs.create(job, kind=kind, model=model, methods=methods, total=len(inputs), units=units,
                  name=manifest.get("name"))
    for u in range(units):
        first = u * size
        c.celery.send_task(task, kwargs={"job": job, "unit": u, "first": first,
                                         "count": min(size, len(inputs) - first)})


def submit_job(spec, files) -> str:
    """A job from uploaded files or from `inputs` keys; returns its id."""
    if files and spec.inputs:
        raise ApiError(400, "give images as files or as 'inputs' keys, not both")
    info = ready_model(spec.model)
    check_methods(spec.methods, info)
    n = len(files) if files else len(spec.inputs or [])
    if n == 0:
        raise ApiError(400, "no images: attach PNG/JPEG files (multipart) or list 'inputs' keys (JSON)")
    check_count(n)
    labels = resolve_labels(spec.labels, n, info["classes"])
    uploads = read_uploads(files)
    job = new_id()
    inputs = store_uploads(job, uploads) if uploads else check_keys(spec.inputs)
    enqueue(job, kind="job", task=EXPLAIN_UNIT, model=spec.model, methods=spec.methods, inputs=inputs,
            unit_size=spec.unit_size, manifest={"name": spec.name, "labels": labels})
    return job


def audit_inputs(audit: str, spec, upload, classes: list[str]) -> tuple[list[dict], list[int]]:
    """The audit's images (stored if uploaded) and their class indices."""
    s = clients.get().settings
    if upload is not None:
        entries, z = datasets.zip_entries(upload.read(), 4 * s.max_upload_mb * 2**20)
    else:
        entries = datasets.prefix_entries(clients.get().storage, spec.dataset)
    check_count(len(entries), "an audit")
    labels = [datasets.class_index(folder, classes) for folder, _, _ in entries]
    if upload is None:
        return [{"name": f"{folder}/{name}", "key": key} for folder, name, key in entries], labels
    uploads = [(f"{folder}/{name}", check_image(f"{folder}/{name}", datasets.read_entry(z, info), s.max_image_pixels))
               for folder, name, info in entries]
    return store_uploads(audit, uploads), labels


def submit_audit(spec, upload) -> str:
    """An audit of an uploaded zip or a bucket prefix; returns its id."""
    info = ready_model(spec.model)
    check_methods(spec.methods, info)
    if (upload is None) == (spec.dataset is None):
        raise ApiError(400, "give the dataset as a 'dataset' zip file (multipart) or as a 'dataset' prefix (JSON)")
    audit = new_id()
    inputs, labels = audit_inputs(audit, spec, upload, info["classes"])
    enqueue(audit, kind="audit", task=AUDIT_UNIT, model=spec.model, methods=spec.methods, inputs=inputs,
            unit_size=spec.unit_size, manifest={"name": spec.name, "truth": labels,
                                                "options": spec.options.model_dump()})
    return audit

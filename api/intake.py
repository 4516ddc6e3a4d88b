"""Turning a request into a job: check the spec against the registry and the model's
manifest, store the inputs, write the manifest, record the job, enqueue its units."""
from __future__ import annotations

import io
import math
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from PIL import Image, UnidentifiedImageError

from api import services
from api.errors import ApiError
from shared import methods as registry
from shared import storage as keys
from shared.celery_app import EXPLAIN_UNIT

FORMATS = {"PNG", "JPEG", "MPO"}  # MPO: the multi-picture JPEG of phone cameras


def new_id() -> str:
    return uuid.uuid4().hex


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


def model_info(name: str) -> dict:
    info = services.get().storage.get_json_or_none(f"{keys.model_prefix(name)}/model.json")
    if info is None:
        raise ApiError(404, f"unknown model {name!r}: register it with POST /v1/models (see GET /v1/models)")
    if info["status"] != "ready":
        raise ApiError(409, f"model {name!r} is {info['status']}" + (f": {info['error']}" if info.get("error") else ""))
    return info


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


def check_methods(methods: dict[str, dict], info: dict) -> None:
    """Layers and filter indices must exist in the model."""
    layers = {layer["path"]: layer for layer in info.get("layers", [])}
    for name, params in methods.items():
        if info["format"] == "torchscript" and registry.get(name).needs_layer:
            raise ApiError(422, f"methods.{name}: reads a layer through a hook, which TorchScript models do not "
                                "allow; register the architecture with its weights instead")
        path = params.get("layer")
        if path is None:
            continue
        if path not in layers:
            convs = [p for p, layer in layers.items() if layer.get("conv")]
            raise ApiError(422, f"methods.{name}.layer: model {info['name']!r} has no layer {path!r}; "
                                f"convolutional layers: {', '.join(convs) or 'none'}")
        width = layers[path].get("out_channels")
        for k in params.get("filters", []):
            if width is not None and not 0 <= k < width:
                raise ApiError(422, f"methods.{name}.filters: {k} is out of range; layer {path!r} has {width} filters")
        if name == "gradcam" and not layers[path].get("conv"):
            raise ApiError(422, f"methods.gradcam.layer: {path!r} is not a convolutional layer")


def store_uploads(job: str, uploads: list[tuple[str, bytes]]) -> list[dict]:
    st = services.get().storage
    inputs = [{"name": name, "key": keys.input_key(job, i)} for i, (name, _) in enumerate(uploads)]
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
    st = services.get().storage
    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(st.exists, inputs))
    missing = [k for k, ok in zip(inputs, found) if not ok]
    if missing:
        raise ApiError(422, f"inputs: {len(missing)} key(s) not in bucket {st.bucket!r}", missing[:20])
    return [{"name": k.rsplit("/", 1)[-1], "key": k} for k in inputs]


def enqueue(job: str, *, kind: str, task: str, model: str, methods: dict, inputs: list[dict],
            unit_size: int | None, manifest: dict) -> None:
    svc = services.get()
    size = unit_size or svc.settings.unit_size
    units = max(1, math.ceil(len(inputs) / size))
    svc.storage.put_json(keys.job_key(job), {
        **manifest, "id": job, "kind": kind, "model": model, "methods": methods,
        "inputs": inputs, "unit_size": size, "units": units, "created": time.time(),
    })
    svc.jobs.create(job, kind=kind, model=model, methods=methods, total=len(inputs), units=units,
                    name=manifest.get("name"))
    for u in range(units):
        first = u * size
        svc.celery.send_task(task, kwargs={"job": job, "unit": u, "first": first,
                                           "count": min(size, len(inputs) - first)})


def submit_job(spec, uploads: list[tuple[str, bytes]]) -> str:
    """Validate everything first, so a bad request stores nothing."""
    svc = services.get()
    info = model_info(spec.model)
    check_methods(spec.methods, info)
    n = len(uploads) if uploads else len(spec.inputs or [])
    if n == 0:
        raise ApiError(400, "no images: attach PNG/JPEG files (multipart) or list 'inputs' keys (JSON)")
    if n > svc.settings.max_images_per_job:
        raise ApiError(413, f"{n} images; a job takes at most {svc.settings.max_images_per_job}")
    labels = resolve_labels(spec.labels, n, info["classes"])
    job = new_id()
    inputs = store_uploads(job, uploads) if uploads else check_keys(spec.inputs)
    enqueue(job, kind="job", task=EXPLAIN_UNIT, model=spec.model, methods=spec.methods, inputs=inputs,
            unit_size=spec.unit_size, manifest={"name": spec.name, "labels": labels})
    return job

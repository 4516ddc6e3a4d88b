"""/v1/models: register a model (architecture + weights, or TorchScript) and list its layers."""
from __future__ import annotations

import time

from celery.exceptions import TimeoutError as CeleryTimeout
from flask import Blueprint, request

from api import clients, intake, records
from api.errors import ApiError
from api.openapi import doc
from shared.messaging import INSPECT_MODEL
from shared.schemas import ModelInfo, ModelList, ModelSpec
from shared.storage import keys

bp = Blueprint("models", __name__, url_prefix="/v1/models")


def weights_format(architecture: str, data: bytes) -> str:
    if architecture == "torchscript":
        return "torchscript"
    if len(data) > 8 and data[8:9] == b"{" and int.from_bytes(data[:8], "little") < len(data):
        return "safetensors"
    return "state_dict"  # loaded by the worker with torch.load(weights_only=True)


@bp.post("")
@doc(resp={"HTTP_201": ModelInfo, "HTTP_202": ModelInfo}, errors=(400, 401, 409, 413, 422), tags=["models"])
def register_model():
    """Register a model: multipart with a `weights` file and a `spec` JSON field
    (ModelSpec). A worker loads the weights safely and lists the layers; `?replace=1`
    overwrites a model of the same name."""
    spec, _ = intake.read_spec(ModelSpec)
    weights = request.files.get("weights")
    if weights is None:
        raise ApiError(400, "attach the weights as a multipart file field 'weights'")
    data = weights.read()
    if not data:
        raise ApiError(400, "the 'weights' file is empty")
    c = clients.get()
    if c.storage.exists(keys.model(spec.name)) and request.args.get("replace") not in ("1", "true"):
        raise ApiError(409, f"model {spec.name!r} exists; POST with ?replace=1 to overwrite it")
    fmt = weights_format(spec.architecture, data)
    c.storage.put(keys.weights(spec.name), data)
    info = {**spec.model_dump(), "format": fmt, "status": "registering", "layers": [], "created": time.time()}
    c.storage.put_json(keys.model(spec.name), info)
    result = c.celery.send_task(INSPECT_MODEL, kwargs={"name": spec.name}, ignore_result=False)
    try:
        result.get(timeout=c.settings.model_inspect_timeout_s, propagate=False)
    except CeleryTimeout:
        return info, 202  # no worker yet: GET /v1/models/{name} shows when it is ready
    finally:
        result.forget()
    info = c.storage.get_json(keys.model(spec.name))
    if info["status"] == "invalid":
        raise ApiError(422, f"the weights do not load into {spec.architecture!r}: {info['error']}")
    return info, 201


@bp.get("")
@doc(resp={"HTTP_200": ModelList}, errors=(401,), tags=["models"])
def list_models():
    """Registered models."""
    st = clients.get().storage
    names = sorted(filter(None, map(keys.model_name, st.list(keys.models()))))
    return {"models": [m for m in (st.get_json_or_none(keys.model(n)) for n in names) if m]}


@bp.get("/<name>")
@doc(resp={"HTTP_200": ModelInfo}, errors=(401, 404), tags=["models"])
def get_model(name: str):
    """A model's manifest, with its layers by module path (e.g. `cnn.15`)."""
    return records.model_manifest(name)

"""/v1/models: register a model (it is checked by a worker, confined, in the background)
and read its manifest, layers and versions."""
from __future__ import annotations

import hashlib
import json
import time

from flask import Blueprint, request

from api import auth, clients, intake, records
from api.errors import ApiError
from api.openapi import doc, multipart
from shared.schemas import ModelInfo, ModelList, ModelSpec, RegisterQuery
from shared.storage import Keys

bp = Blueprint("models", __name__, url_prefix="/v1/models")
FORMATS = ("torchscript", "huggingface", "export")   # architectures that are also their weights' format


def weights_format(architecture: str, data: bytes) -> str:
    if architecture in FORMATS:
        return architecture
    if len(data) > 8 and data[8:9] == b"{" and int.from_bytes(data[:8], "little") < len(data):
        return "safetensors"
    return "state_dict"  # loaded by the worker with torch.load(weights_only=True)


def completed_spec(spec: ModelSpec, data: bytes) -> dict:
    """The spec, with what a Hugging Face model's configs say where the spec is silent."""
    d = spec.model_dump()
    if spec.architecture == "huggingface":
        from shared import huggingface

        try:
            config, preprocessor = huggingface.read_configs(data)
            found = huggingface.spec_from_configs(config, preprocessor)
        except (ValueError, KeyError, TypeError) as e:
            raise ApiError(422, f"weights: not a zip of a save_pretrained folder: {str(e)[:300]}") from None
        d = {**found, **{k: v for k, v in d.items() if v is not None}}
        try:
            ModelSpec.model_validate({k: d[k] for k in ModelSpec.model_fields})
        except ValueError as e:
            raise ApiError(422, f"the model's configs give an unusable spec: {str(e)[:300]}") from None
    return d


def version_of(weights_hash, spec: dict) -> str:
    """Content hash of the weights (their sha256, which this leaves as it is) and the spec:
    a job binds it at submit."""
    h = weights_hash.copy()
    h.update(json.dumps(spec, sort_keys=True).encode())
    return h.hexdigest()[:16]


@bp.post("")
@doc(query=RegisterQuery, form=multipart({"spec": "the model spec (ModelSpec) as JSON"}, files="weights",
                                          required=("spec",)),
     resp={"HTTP_202": ModelInfo}, errors=(400, 403, 409, 413, 422), tags=["models"])
def register_model():
    """Register a model: multipart with a `weights` file and a `spec` JSON field (ModelSpec).
    Answers 202 `registering` at once; a worker loads it confined and lists its layers, and
    `GET /v1/models/{name}` then reads `ready` or `invalid` with the reason. `?replace=1` makes
    a new version (running jobs keep theirs); `?shared=1` (admin key) registers a model every
    tenant may use."""
    spec, _ = intake.read_spec(ModelSpec)
    weights = request.files.get("weights")
    if weights is None:
        raise ApiError(400, "attach the weights as a multipart file field 'weights'")
    data = weights.read()
    if not data:
        raise ApiError(400, "the 'weights' file is empty")
    q = intake.read_query(RegisterQuery)
    shared = q.shared in ("1", "true")
    tenant = (auth.require_admin() if shared else auth.current()).tenant
    k = Keys(None) if shared else Keys(tenant)
    c = clients.get()
    if not shared and c.storage.exists(Keys(None).model(spec.name)):
        raise ApiError(409, f"{spec.name!r} is the name of a shared model; choose another name")
    current = c.storage.get_json_or_none(k.model(spec.name))
    if current is not None and q.replace not in ("1", "true"):
        raise ApiError(409, f"model {spec.name!r} exists; POST with ?replace=1 to register a new version")
    d = completed_spec(spec, data)
    fmt = weights_format(spec.architecture, data)
    weights_hash = hashlib.sha256(data)   # once: the weights may be hundreds of MB
    version = version_of(weights_hash, {**d, "format": fmt})
    info = {**d, "format": fmt, "version": version, "status": "registering", "layers": [], "created": time.time(),
            "shared": shared, "weights_sha256": weights_hash.hexdigest()}
    c.storage.put(k.weights(spec.name, version), data)
    c.storage.put_json(k.version(spec.name, version), info)
    versions = [v for v in (current or {}).get("versions", []) if v["version"] != version]
    info["versions"] = versions + [{"version": version, "status": "registering", "created": info["created"]}]
    c.storage.put_json(k.model(spec.name), info)
    c.enqueue(tenant, [{"tenant": tenant, "kind": "inspect", "shared": shared, "model": spec.name,
                        "version": version}], front=True)
    return info, 202


@bp.get("")
@doc(resp={"HTTP_200": ModelList}, tags=["models"])
def list_models():
    """The models you may use: yours, then the shared ones (yours hide a shared one of the same name)."""
    return {"models": records.available_models()}


@bp.get("/<name>")
@doc(resp={"HTTP_200": ModelInfo}, errors=(404,), tags=["models"])
def get_model(name: str):
    """A model's manifest: status, layers by module path (e.g. `cnn.15`), versions."""
    return records.find_model(name)[0]

"""/v1/models: register a model (it is checked by a worker, confined, in the background),
read its manifest, layers and versions, and delete it. Every record goes through
`shared.models.ModelRecords`."""
from __future__ import annotations

import hashlib
import importlib

from flask import Blueprint, request

from api import auth, connections, intake, records
from api.errors import ApiError
from api.openapi import doc, multipart
from shared.contracts import WorkItem
from shared.formats import MODEL_FORMATS, format_of, reads_configs
from shared.models import ModelBusy, ModelExists, ModelRecords, version_of
from shared.schemas import NAME, DeleteQuery, ModelDeleted, ModelInfo, ModelList, ModelSpec, RegisterQuery
from shared.storage import Keys

bp = Blueprint("models", __name__, url_prefix="/v1/models")


def model_records(keys: Keys) -> ModelRecords:
    c = connections.get()
    return ModelRecords(c.storage, keys, c.jobs.r, c.keys)


def completed_spec(spec: ModelSpec, data: bytes) -> dict:
    """The spec, completed from the upload's configs where its format has them
    (`shared.formats`: a Hugging Face model's config.json and preprocessor_config.json); the
    spec wins wherever it speaks."""
    d = spec.model_dump()
    if not reads_configs(spec.architecture):
        return d
    module, name = MODEL_FORMATS[spec.architecture].configs.split(":")
    try:
        found = getattr(importlib.import_module(module), name)(data, d)
    except (ValueError, KeyError, TypeError) as e:
        raise ApiError(422, f"weights: {str(e)[:400]}") from None
    d = {**d, **found}
    try:
        ModelSpec.model_validate({k: d[k] for k in ModelSpec.model_fields})
    except ValueError as e:
        raise ApiError(422, f"the model's configs give an unusable spec: {str(e)[:300]}") from None
    return d


@bp.post("")
@doc(query=RegisterQuery, form=multipart({"spec": "the model spec (ModelSpec) as JSON"}, files="weights",
                                          required=("spec",)),
     resp={"HTTP_202": ModelInfo}, errors=(400, 403, 409, 413, 422), tags=["models"])
def register_model():
    """Register a model: multipart with a `weights` file and a `spec` JSON field (ModelSpec).
    Answers 202 `registering` at once (or already `ready`/`invalid` when a warm worker was
    quicker than the answer, or this very version was checked before); a worker loads it
    confined and lists its layers, and
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
    if not shared and model_records(Keys(None)).exists(spec.name):
        raise ApiError(409, f"{spec.name!r} is the name of a shared model; choose another name")
    mine = model_records(Keys(None) if shared else Keys(tenant))
    replace = q.replace in ("1", "true")
    if not replace and mine.exists(spec.name):   # before reading the upload's configs; checked again below
        raise ApiError(409, f"model {spec.name!r} exists; POST with ?replace=1 to register a new version")
    d = completed_spec(spec, data)
    fmt = format_of(spec.architecture, data)
    weights_hash = hashlib.sha256(data)   # once: the weights may be hundreds of MB
    info = {**d, "format": fmt, "version": version_of(weights_hash, {**d, "format": fmt}), "shared": shared,
            "weights_sha256": weights_hash.hexdigest()}
    try:
        current, inspect = mine.register(info, data, replace)
    except (ModelExists, ModelBusy) as e:
        raise ApiError(409, str(e)) from None
    if inspect:
        connections.get().enqueue(tenant, [WorkItem(tenant=tenant, kind="inspect", shared=shared, model=spec.name,
                                                version=current["version"])], front=True)
    return mine.get(spec.name) or current, 202


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


@bp.delete("/<name>")
@doc(query=DeleteQuery, resp={"HTTP_200": ModelDeleted}, errors=(403, 404, 409), tags=["models"])
def delete_model(name: str):
    """Delete a model, every version and its weights, whatever its status (`registering`,
    `ready`, `invalid`): your own, or (admin key) a shared one. `?shared=1` names the shared
    model when you also have one of that name. Jobs still bound to one of its versions fail
    the units that had not loaded it."""
    q = intake.read_query(DeleteQuery)
    if not NAME.match(name):
        raise ApiError(404, f"unknown model {name[:64]!r}")
    _, scope = records.find_model(name) if q.shared not in ("1", "true") else (None, "shared")
    if scope == "shared":
        auth.require_admin()
    keys = Keys(None) if scope == "shared" else records.keys()
    try:
        removed = model_records(keys).delete(name)
    except ModelBusy as e:
        raise ApiError(409, str(e)) from None
    if not removed:
        raise ApiError(404, f"unknown model {name[:64]!r}")
    return {"deleted": name, "shared": scope == "shared"}

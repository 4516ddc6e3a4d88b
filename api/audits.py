"""/v1/audits: audit a whole dataset (one folder per class) and read its report."""
from __future__ import annotations

import io
import zipfile
import zlib
from pathlib import PurePosixPath

from flask import Blueprint, request

from api import intake, services
from api.errors import ApiError
from api.jobs import links, read_spec, status_of
from api.openapi import doc
from shared import storage as keys
from shared.celery_app import AUDIT_UNIT
from shared.schemas import AuditSpec, JobCreated, JobStatus

bp = Blueprint("audits", __name__, url_prefix="/v1/audits")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def class_index(folder: str, classes: list[str]) -> int:
    if folder in classes:
        return classes.index(folder)
    raise ApiError(422, f"folder {folder!r} names no class of the model; its classes: {', '.join(classes[:50])}")


def zip_entries(data: bytes, max_bytes: int, max_files: int) -> list[tuple[str, str, bytes]]:
    """(class folder, name, bytes) of every image of a one-folder-per-class zip."""
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ApiError(400, "'dataset' is not a zip file") from None
    infos = [i for i in z.infolist() if not i.is_dir() and i.filename.lower().endswith(IMAGE_SUFFIXES)
             and not PurePosixPath(i.filename).name.startswith(".") and "__MACOSX" not in i.filename]
    if not infos:
        raise ApiError(422, "the zip holds no PNG/JPEG images in class folders")
    if len(infos) > max_files:
        raise ApiError(413, f"the zip holds {len(infos)} images; an audit takes at most {max_files}")
    if sum(i.file_size for i in infos) > max_bytes:
        raise ApiError(413, f"the zip unpacks to more than {max_bytes // 2**20} MB")
    parts = [PurePosixPath(i.filename).parts for i in infos]
    # A zip of the dataset's own folder: strip the one top folder all paths share.
    while all(len(p) > 2 for p in parts) and len({p[0] for p in parts}) == 1:
        parts = [p[1:] for p in parts]
    if any(len(p) != 2 for p in parts):
        bad = next("/".join(p) for p in parts if len(p) != 2)
        raise ApiError(422, f"{bad!r}: the zip must hold one folder per class with images directly inside")
    try:
        return [(p[0], p[1], z.read(i)) for p, i in zip(parts, infos)]
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError, zlib.error) as e:
        raise ApiError(400, f"cannot read the zip: {type(e).__name__}: {e}") from None


def prefix_entries(prefix: str) -> list[tuple[str, str, str]]:
    """(class folder, name, key) of the images under a bucket prefix laid out {prefix}/{class}/{file}."""
    prefix = prefix.strip("/") + "/"
    out = []
    for key in services.get().storage.list(prefix):
        rest = PurePosixPath(key[len(prefix):]).parts
        if len(rest) == 2 and key.lower().endswith(IMAGE_SUFFIXES):
            out.append((rest[0], rest[1], key))
    if not out:
        raise ApiError(422, f"no images under {prefix!r} in the layout {prefix}<class>/<image>")
    return out


@bp.post("")
@doc(json=AuditSpec, resp={"HTTP_202": JobCreated}, errors=(400, 401, 404, 409, 413, 422), tags=["audits"])
def create_audit():
    """Audit a dataset: multipart with a `dataset` zip (one folder per class) and a `spec`
    field, or a JSON spec whose `dataset` is a bucket prefix laid out `{prefix}/{class}/{image}`."""
    svc = services.get()
    spec, _ = read_spec(AuditSpec)
    info = intake.model_info(spec.model)
    intake.check_methods(spec.methods, info)
    upload = request.files.get("dataset")
    if (upload is None) == (spec.dataset is None):
        raise ApiError(400, "give the dataset as a 'dataset' zip file (multipart) or as a 'dataset' prefix (JSON)")
    s = svc.settings
    audit = intake.new_id()
    if upload is not None:
        entries = zip_entries(upload.read(), 4 * s.max_upload_mb * 2**20, s.max_images_per_job)
        labels = [class_index(folder, info["classes"]) for folder, _, _ in entries]
        uploads = [(f"{folder}/{name}", intake.check_image(f"{folder}/{name}", data, s.max_image_pixels))
                   for folder, name, data in entries]
        inputs = intake.store_uploads(audit, uploads)
    else:
        entries = prefix_entries(spec.dataset)
        if len(entries) > s.max_images_per_job:
            raise ApiError(413, f"{len(entries)} images; an audit takes at most {s.max_images_per_job}")
        labels = [class_index(folder, info["classes"]) for folder, _, _ in entries]
        inputs = [{"name": f"{folder}/{name}", "key": key} for folder, name, key in entries]
    intake.enqueue(audit, kind="audit", task=AUDIT_UNIT, model=spec.model, methods=spec.methods, inputs=inputs,
                   unit_size=spec.unit_size, manifest={"name": spec.name, "truth": labels,
                                                        "options": spec.options.model_dump()})
    return {"id": audit, "status": "queued", "links": links(audit, "audit")}, 202, \
        {"Location": links(audit, "audit")["self"]}


def audit_status(audit: str) -> dict:
    state = status_of(audit)
    if state["kind"] != "audit":
        raise ApiError(404, f"unknown audit {audit!r} (it is a job: GET /v1/jobs/{audit})")
    return state


@bp.get("/<audit>")
@doc(resp={"HTTP_200": JobStatus}, errors=(401, 404), tags=["audits"])
def get_audit(audit: str):
    """Status and progress of an audit (the report is written once every image is done)."""
    return audit_status(audit)


@bp.get("/<audit>/report")
@doc(errors=(401, 404, 409), tags=["audits"])
def report(audit: str):
    """The report: `report` (report.json, schema in worker/audit/REPORT.md) and `html`, a
    presigned URL of the self-contained report.html."""
    state = audit_status(audit)
    if state["status"] != "succeeded":
        raise ApiError(409, f"audit {audit} is {state['status']}; the report is written when it succeeds")
    st = services.get().storage
    return {"report": st.get_json(f"audits/{audit}/report.json"), "html": st.url(f"audits/{audit}/report.html")}

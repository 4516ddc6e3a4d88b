"""/v1/uploads: store images once, then name them in jobs (`inputs`) and audits (`dataset`)."""
from __future__ import annotations

from flask import Blueprint, request, url_for

from api import clients, intake, records
from api.errors import ApiError
from api.openapi import doc, multipart
from shared.schemas import Uploaded, UploadList, UploadsQuery, valid_path

bp = Blueprint("uploads", __name__, url_prefix="/v1/uploads")


@bp.post("")
@doc(form=multipart({"folder": "e.g. sets/val/cat"}, files="images"), resp={"HTTP_201": Uploaded},
     errors=(400, 413, 415, 422), tags=["uploads"])
def upload():
    """Store PNG/JPEG files (multipart, any field name) under a `folder` form field (e.g.
    `sets/val/cat`); each is stored as `{folder}/{file name}` and replaces one of that path."""
    if request.mimetype != "multipart/form-data":
        raise ApiError(400, "send multipart/form-data with image files and a 'folder' field")
    folder = request.form.get("folder", "").strip("/")
    files = [f for key in request.files for f in request.files.getlist(key)]
    if not files:
        raise ApiError(400, "attach at least one PNG or JPEG file")
    intake.check_count(len(files), "an upload")
    paths = [f"{folder}/{f.filename}" if folder else (f.filename or "") for f in files]
    bad = [p for p in paths if not valid_path(p)]
    if bad:
        raise ApiError(422, "folder and file names: letters, digits, '.', '_', '-' separated by '/', no '..'",
                       [b[:200] for b in bad[:20]])
    k = records.keys()
    intake.store_checked(((p, f.read) for p, f in zip(paths, files)), lambda i, p: k.upload(p))
    return {"stored": paths}, 201


@bp.get("")
@doc(query=UploadsQuery, resp={"HTTP_200": UploadList}, errors=(422,), tags=["uploads"])
def list_uploads():
    """Your uploads under `?folder=` (all by default), `?limit=` at most (1000)."""
    q = intake.read_query(UploadsQuery)
    folder, limit = q.folder.strip("/"), q.limit
    if folder and not valid_path(folder):
        raise ApiError(422, "folder: letters, digits, '.', '_', '-' separated by '/'")
    k = records.keys()
    keys = clients.get().storage.list(k.uploads(folder), limit=limit + 1)
    start = len(k.uploads())
    paths = [key[start:] for key in keys[:limit]]
    more = url_for("uploads.list_uploads", folder=folder, limit=limit * 2) if len(keys) > limit else None
    return {"paths": paths, "next": more}

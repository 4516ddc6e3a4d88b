"""/v1/uploads: store images once, then name them in jobs (`inputs`) and audits (`dataset`).

One request's images go into tar shards of their own (streamed: any number of files), and
each folder it touched gets an index object naming its files; a later upload of the same
path wins. File names may carry sub-folders (`cat/a.png`), so a class-folder tree is
mirrored under the request's `folder`."""
from __future__ import annotations

import secrets
import time
from concurrent.futures import ThreadPoolExecutor

from flask import Blueprint, request, url_for

from api import connections, datasets, intake, records, streaming
from api.errors import ApiError
from api.openapi import doc, multipart
from shared.contracts import UploadedFile, UploadIndex
from shared.schemas import Uploaded, UploadList, UploadsQuery, valid_path
from shared.shards import SHARD_BYTES, TarShard

bp = Blueprint("uploads", __name__, url_prefix="/v1/uploads")


class Batch:
    """One upload request's files, shard by shard."""

    def __init__(self, keys):
        self.keys, self.st = keys, connections.get().storage
        self.id = f"{time.time_ns():020d}-{secrets.token_hex(4)}"   # sorts by time
        self.shards: list[str] = []
        self.shard: TarShard | None = None
        self.files: dict[str, dict[str, UploadedFile]] = {}   # folder -> name -> where
        self.paths: set[str] = set()
        self.pool = ThreadPoolExecutor(2, thread_name_prefix="xaiq-uploads")
        self.futures = []

    def add(self, path: str, data: bytes, pixels: int) -> None:
        if path in self.paths:
            raise ApiError(422, f"{path[:200]!r} is sent twice in this request: names must differ within a folder")
        self.paths.add(path)
        if self.shard is None:
            self.shard = TarShard()
        span = self.shard.add(f"{self.shard.members:08d}", data)
        folder, _, name = path.rpartition("/")
        self.files.setdefault(folder, {})[name] = UploadedFile(shard=len(self.shards), offset=span.offset,
                                                              length=span.length, pixels=pixels)
        if self.shard.size >= SHARD_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self.shard is not None and self.shard.members:
            key = self.keys.upload_shard(self.id, len(self.shards))
            self.shards.append(key)
            while len(self.futures) >= 2:
                self.futures.pop(0).result()
            self.futures.append(self.pool.submit(self.st.put, key, self.shard.getvalue(), "application/x-tar"))
        self.shard = None

    def close(self, folder: str) -> list[str]:
        """Write the rest and the folders' indexes (last: what they name is stored)."""
        self._flush()
        for f in self.futures:
            f.result()
        now = time.time()
        for sub, files in self.files.items():
            where = "/".join(p for p in (folder, sub) if p)
            ix = UploadIndex(batch=self.id, folder=where, created=now, shards=self.shards, files=files)
            self.st.put(self.keys.upload_index(where, self.id), ix.model_dump_json().encode(), "application/json")
        self.pool.shutdown()
        return sorted("/".join(p for p in (folder, path) if p) for path in self.paths)

    def abort(self) -> None:
        self.pool.shutdown(wait=True)
        try:
            self.st.remove_prefix(self.keys.upload_shard(self.id, 0).rsplit("/", 1)[0] + "/")
        except Exception:  # noqa: BLE001 - an orphan shard is never referenced
            pass


@bp.post("")
@doc(form=multipart({"folder": "e.g. sets/val; send it before the files"}, files="images"),
     resp={"HTTP_201": Uploaded}, errors=(400, 413, 415, 422), tags=["uploads"])
def upload():
    """Store PNG/JPEG files (multipart, streamed, any field name) under a `folder` form field
    (e.g. `sets/val`); each is stored as `{folder}/{file name}`, where a file name may carry
    sub-folders (`cat/a.png`: a class-folder tree is mirrored) and replaces an earlier upload
    of that path. The same path twice in one request is refused."""
    c = connections.get()
    request.max_content_length = int(c.settings.max_dataset_gb * 2**30)
    batch, folder = Batch(records.keys()), None
    try:
        for part in streaming.parts(c.settings.max_images_per_job + 16):
            if part.filename is None:
                if part.name != "folder":
                    raise ApiError(400, f"unknown form field {part.name[:50]!r}: send a 'folder' field and image files")
                folder = _folder(part.read(4096).decode("utf-8", "replace"))
                continue
            path = (part.filename or "").strip("/")
            if not valid_path("/".join(p for p in (folder, path) if p)):
                raise ApiError(422, f"{path[:200]!r}: folder and file names: letters, digits, '.', '_', '-' separated "
                                    "by '/', no '..'")
            data = part.read(c.settings.max_image_mb << 20)
            _, pixels = streaming.probe_image(path, data, c.settings.max_image_pixels)
            intake.check_count(len(batch.paths) + 1, "an upload")
            batch.add(path, data, pixels)
        if not batch.paths:
            raise ApiError(400, "attach at least one PNG or JPEG file")
        return {"stored": batch.close(folder or "")}, 201
    except BaseException:
        batch.abort()
        raise


def _folder(value: str) -> str:
    folder = value.strip().strip("/")
    if folder and not valid_path(folder):
        raise ApiError(422, "folder: letters, digits, '.', '_', '-' separated by '/', no '..'")
    return folder


@bp.get("")
@doc(query=UploadsQuery, resp={"HTTP_200": UploadList}, errors=(422,), tags=["uploads"])
def list_uploads():
    """Your uploads under `?folder=` (all by default), `?limit=` at most (1000)."""
    q = intake.read_query(UploadsQuery)
    folder, limit = q.folder.strip("/"), q.limit
    if folder and not valid_path(folder):
        raise ApiError(422, "folder: letters, digits, '.', '_', '-' separated by '/'")
    paths = sorted(datasets.folder_files(connections.get().storage, records.keys(), folder, recursive=True))
    more = url_for("uploads.list_uploads", folder=folder, limit=limit * 2) if len(paths) > limit else None
    return {"paths": paths[:limit], "next": more}

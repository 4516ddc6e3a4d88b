"""/v1/jobs/{id}/...: a job's results one by one (an item, its input, each method's picture
and raw map, a unit's pictures) by range reads of the units' shards, and all maps of a
method at once. Each answers to the key, the session, or a signed link (`?exp=&kid=&sig=`,
as the results pages give them)."""
from __future__ import annotations

import io

import numpy as np
from flask import Blueprint, Response, abort, stream_with_context

from api import connections, records
from api.errors import ApiError
from api.openapi import doc

bp = Blueprint("results", __name__, url_prefix="/v1/jobs")
PNG, JPEG = b"\x89PNG", b"\xff\xd8"


def _manifest(job: str):
    return records.state_and_manifest(job)[1]


def _method(m, filename: str, ext: str) -> str:
    method = filename[:-len(ext) - 1]
    if not filename.endswith(f".{ext}") or method not in m.methods:
        raise ApiError(404, f"{filename[:100]!r}: the job's files are <method>.png and <method>.npy for its methods "
                            f"({', '.join(m.methods)})")
    return method


@bp.get("/<job>/items/<int:index>")
@doc(errors=(404,), tags=["results"])
def item(job: str, index: int):
    """One image's record: prediction, status, timings, and signed links to its files."""
    m = _manifest(job)
    rec, it = records.record_of(m, index)
    return records.item_view(job, rec, it, list(m.methods))


@bp.get("/<job>/items/<int:index>/input")
@doc(errors=(404,), tags=["results"])
def item_input(job: str, index: int):
    """The image as it was given."""
    data = records.item_input(_manifest(job), index)
    kind = "image/png" if data.startswith(PNG) else "image/jpeg" if data.startswith(JPEG) else "application/octet-stream"
    return Response(data, mimetype=kind, headers={"Cache-Control": "private, max-age=3600"})


@bp.get("/<job>/items/<int:index>/<filename>")
@doc(errors=(404,), tags=["results"])
def item_file(job: str, index: int, filename: str):
    """`{method}.png` (the picture, at the input's size) or `{method}.npy` (the raw float32 map)."""
    m = _manifest(job)
    if filename.endswith(".png"):
        return Response(records.item_png(m, index, _method(m, filename, "png")), mimetype="image/png",
                        headers={"Cache-Control": "private, max-age=3600"})
    if filename.endswith(".npy"):
        return Response(records.item_npy(m, index, _method(m, filename, "npy")), mimetype="application/octet-stream",
                        headers={"Content-Disposition": f"attachment; filename={index}-{filename}"})
    abort(404)


@bp.get("/<job>/units/<int:unit>/<filename>")
@doc(errors=(404,), tags=["results"])
def unit_file(job: str, unit: int, filename: str):
    """A unit's picture: `figure.png` (its first images and their pictures) or a method's
    per-unit picture (`filters-visualizations-{k}.png`)."""
    return Response(records.unit_file(_manifest(job), unit, filename), mimetype="image/png")


@bp.get("/<job>/maps/<filename>")
@doc(errors=(404,), tags=["results"])
def maps(job: str, filename: str):
    """`{method}.npy`: the maps of every image of the job stacked in index order, (N, ...)
    float32; images without a map (failed, not run yet) are rows of NaN. Streamed unit by unit."""
    m = _manifest(job)
    method = _method(m, filename, "npy")
    shape = next((r.maps[method].shape for u in range(m.units) if (r := records.unit_records(m, u)) is not None
                  and method in r.maps), None)
    if shape is None:
        raise ApiError(404, f"no image of job {job} has a {method} map yet")
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False,
                                               "shape": (m.inputs.count, *shape)})
    return Response(stream_with_context(_rows(m, method, shape, buf.getvalue())), mimetype="application/octet-stream",
                    headers={"Content-Disposition": f"attachment; filename={job}-{method}.npy"})


def _rows(m, method: str, shape: list[int], header: bytes):
    nan = np.full(shape, np.nan, np.float32).tobytes()
    yield header
    for u in range(m.units):
        first, count = m.unit_range(u)
        rec = records.unit_records(m, u)
        shard = rec.maps.get(method) if rec is not None else None
        data = connections.get().storage.get_range(shard.key, shard.offset, shard.offset + shard.rows * shard.row_bytes) \
            if shard is not None else b""
        for it in (rec.items if rec is not None else [None] * count):
            if it is not None and it.row is not None and shard is not None:
                yield data[it.row * shard.row_bytes:(it.row + 1) * shard.row_bytes]
            else:
                yield nan

"""/v1/jobs: submit, list, poll, results, cancel."""
from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

from flask import Blueprint, request, url_for

from api import intake, services
from api.errors import ApiError
from api.openapi import doc
from shared import storage as keys
from shared.schemas import JobCreated, JobList, JobSpec, JobStatus, ResultsPage

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")
JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def read_spec(model):
    """The spec from a multipart field `spec` or a JSON body, plus uploaded files."""
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
    spec = model.model_validate(body)
    return spec, files


def read_uploads(files) -> list[tuple[str, bytes]]:
    limit = services.get().settings.max_image_pixels
    return [(f.filename or f"image-{i}", intake.check_image(f.filename or f"image-{i}", f.read(), limit))
            for i, f in enumerate(files)]


def links(job: str, kind: str = "job") -> dict:
    if kind == "audit":
        return {"self": url_for("audits.get_audit", audit=job), "page": url_for("ui.audit_page", audit=job),
                "report": url_for("audits.report", audit=job), "results": url_for("jobs.results", job=job)}
    return {"self": url_for("jobs.get_job", job=job), "results": url_for("jobs.results", job=job),
            "page": url_for("ui.job_page", job=job)}


def status_of(job: str) -> dict:
    """Live state from Redis; the manifest in storage when Redis no longer has it."""
    if not JOB_ID.match(job):
        raise ApiError(404, f"unknown job {job!r}")
    svc = services.get()
    state = svc.jobs.get(job)
    if state is None:
        m = svc.storage.get_json_or_none(keys.job_key(job))
        if m is None:
            raise ApiError(404, f"unknown job {job!r}")
        state = {
            "id": job, "kind": m.get("kind", "job"), "name": m.get("name"), "status": m.get("status", "queued"),
            "model": m["model"], "methods": m["methods"],
            "progress": m.get("progress", {"total": len(m["inputs"]), "done": 0, "failed": 0}),
            "created": m["created"], "started": m.get("started"), "finished": m.get("finished"),
            "error": m.get("error"),
        }
    return {**state, "links": links(job, state["kind"])}


@bp.post("")
@doc(json=JobSpec, resp={"HTTP_202": JobCreated}, errors=(400, 401, 404, 409, 413, 422), tags=["jobs"])
def create_job():
    """Submit a bulk job: multipart images + a `spec` field, or a JSON spec whose `inputs` name stored images."""
    spec, files = read_spec(JobSpec)
    if files and spec.inputs:
        raise ApiError(400, "give images as files or as 'inputs' keys, not both")
    job = intake.submit_job(spec, read_uploads(files))
    return {"id": job, "status": "queued", "links": links(job)}, 202, {"Location": links(job)["self"]}


@bp.get("")
@doc(resp={"HTTP_200": JobList}, tags=["jobs"])
def list_jobs():
    """Jobs and audits, newest first (`?limit=50&offset=0`)."""
    limit = min(max(request.args.get("limit", 50, type=int), 1), 500)
    offset = max(request.args.get("offset", 0, type=int), 0)
    svc = services.get()
    jobs = []
    for job in svc.jobs.ids(offset, limit):
        state = svc.jobs.get(job)
        if state:
            jobs.append({**state, "links": links(job, state["kind"])})
    return {"jobs": jobs}


@bp.get("/<job>")
@doc(resp={"HTTP_200": JobStatus}, errors=(401, 404), tags=["jobs"])
def get_job(job: str):
    """Status and progress of a job."""
    return status_of(job)


@bp.delete("/<job>")
@doc(resp={"HTTP_202": JobStatus}, errors=(401, 404), tags=["jobs"])
def cancel_job(job: str):
    """Cancel: units not yet started are skipped; the job reads `cancelled` once none runs."""
    status_of(job)
    svc = services.get()
    if svc.jobs.cancel(job) == "cancelled":  # nothing was running: no worker will write the manifest
        keys.record_final(svc.storage, svc.jobs.get(job))
    return status_of(job), 202


@bp.get("/<job>/results")
@doc(resp={"HTTP_200": ResultsPage}, errors=(401, 404), tags=["jobs"])
def results(job: str):
    """Per image: prediction and presigned `png` / `npy` URLs per method (`?page=1&per_page=50`)."""
    state = status_of(job)
    st = services.get().storage
    page = max(request.args.get("page", 1, type=int), 1)
    per_page = min(max(request.args.get("per_page", 50, type=int), 1), 500)
    manifest = st.get_json(keys.job_key(job))
    total = len(manifest["inputs"])
    indices = range((page - 1) * per_page, min(page * per_page, total))
    with ThreadPoolExecutor(8) as pool:
        items = list(pool.map(lambda i: item_of(st, job, i, manifest, state["status"]), indices))
    nxt = url_for("jobs.results", job=job, page=page + 1, per_page=per_page) if indices.stop < total else None
    return {"job": job, "status": state["status"], "page": page, "per_page": per_page, "total": total,
            "items": items, "extras": extras_of(st, job) if page == 1 else {}, "next": nxt}


def item_of(st, job: str, i: int, manifest: dict, job_status: str) -> dict:
    prefix = keys.item_prefix(job, i)
    item = st.get_json_or_none(f"{prefix}/item.json")
    name = manifest["inputs"][i]["name"]
    if item is None:
        final = job_status in ("succeeded", "failed", "cancelled")
        return {"index": i, "name": name, "status": "failed" if job_status == "failed" else "pending",
                "error": "not run: the job was cancelled" if job_status == "cancelled" else None} \
            if final else {"index": i, "name": name, "status": "pending"}
    item["methods"] = {m: {"png": st.url(f"{prefix}/{m}.png"), "npy": st.url(f"{prefix}/{m}.npy")}
                       for m in item.get("methods", [])}
    return item


def extras_of(st, job: str) -> dict:
    prefix = f"jobs/{job}/units/"
    return {k[len(prefix):]: st.url(k) for k in st.list(prefix)[:200] if k.endswith(".png")}

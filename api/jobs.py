"""/v1/jobs: submit, list, poll, results, cancel."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from flask import Blueprint, request, url_for

from api import clients, intake, records
from api.openapi import doc
from shared.schemas import JobCreated, JobList, JobSpec, JobStatus, ResultsPage
from shared.storage import keys, record_final

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")


@bp.post("")
@doc(json=JobSpec, resp={"HTTP_202": JobCreated}, errors=(400, 401, 404, 409, 413, 422), tags=["jobs"])
def create_job():
    """Submit a bulk job: multipart images + a `spec` field, or a JSON spec whose `inputs` name stored images."""
    spec, files = intake.read_spec(JobSpec)
    job = intake.submit_job(spec, files)
    links = records.links(job)
    return {"id": job, "status": "queued", "links": links}, 202, {"Location": links["self"]}


@bp.get("")
@doc(resp={"HTTP_200": JobList}, tags=["jobs"])
def list_jobs():
    """Jobs and audits, newest first (`?limit=50&offset=0`)."""
    limit = min(max(request.args.get("limit", 50, type=int), 1), 500)
    offset = max(request.args.get("offset", 0, type=int), 0)
    return {"jobs": records.recent(limit, offset)}


@bp.get("/<job>")
@doc(resp={"HTTP_200": JobStatus}, errors=(401, 404), tags=["jobs"])
def get_job(job: str):
    """Status and progress of a job."""
    return records.job_state(job)


@bp.delete("/<job>")
@doc(resp={"HTTP_202": JobStatus}, errors=(401, 404), tags=["jobs"])
def cancel_job(job: str):
    """Cancel: units not yet started are skipped; the job reads `cancelled` once none runs."""
    records.job_state(job)
    c = clients.get()
    if c.jobs.cancel(job) == "cancelled":  # nothing was running: no worker will write the manifest
        record_final(c.storage, c.jobs.get(job))
    return records.job_state(job), 202


@bp.get("/<job>/results")
@doc(resp={"HTTP_200": ResultsPage}, errors=(401, 404), tags=["jobs"])
def results(job: str):
    """Per image: prediction and presigned `png` / `npy` URLs per method (`?page=1&per_page=50`)."""
    state = records.job_state(job)
    st = clients.get().storage
    page = max(request.args.get("page", 1, type=int), 1)
    per_page = min(max(request.args.get("per_page", 50, type=int), 1), 500)
    manifest = st.get_json(keys.job(job))
    total = len(manifest["inputs"])
    indices = range((page - 1) * per_page, min(page * per_page, total))
    with ThreadPoolExecutor(8) as pool:
        items = list(pool.map(lambda i: records.item_of(st, job, i, manifest, state["status"]), indices))
    nxt = url_for("jobs.results", job=job, page=page + 1, per_page=per_page) if indices.stop < total else None
    return {"job": job, "status": state["status"], "page": page, "per_page": per_page, "total": total,
            "items": items, "extras": records.extras_of(st, job) if page == 1 else {}, "next": nxt}

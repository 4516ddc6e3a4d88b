"""/v1/jobs: submit, list, poll, results, cancel."""
from __future__ import annotations

from flask import Blueprint, url_for

from api import clients, intake, records, submit
from api.openapi import doc, multipart
from shared.schemas import JobCreated, JobList, JobSpec, ListQuery, ResultsPage, ResultsQuery
from shared.schemas import JobStatus as JobStatusSchema

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")


@bp.post("")
@doc(json=JobSpec, form=multipart({"spec": "the job spec (JobSpec) as JSON"}, files="images", required=("spec",)),
     resp={"HTTP_202": JobCreated}, errors=(400, 404, 409, 413, 415, 422, 429), tags=["jobs"])
def create_job():
    """Submit a bulk job: multipart images + a `spec` field, or a JSON spec whose `inputs` name your uploads."""
    spec, files = intake.read_spec(JobSpec)
    job, gflop, limit = submit.submit_job(spec, files)
    return records.created(job, "job", gflop, limit)


@bp.get("")
@doc(query=ListQuery, resp={"HTTP_200": JobList}, errors=(422,), tags=["jobs"])
def list_jobs():
    """Your jobs and audits, newest first (`?limit=50&offset=0`)."""
    q = intake.read_query(ListQuery)
    return {"jobs": records.recent(q.limit, q.offset)}


@bp.get("/<job>")
@doc(resp={"HTTP_200": JobStatusSchema}, errors=(404,), tags=["jobs"])
def get_job(job: str):
    """Status and progress of a job."""
    return records.job_state(job)


@bp.delete("/<job>")
@doc(resp={"HTTP_202": JobStatusSchema}, errors=(404,), tags=["jobs"])
def cancel_job(job: str):
    """Cancel: no unit starts afterwards, running units stop at their next batch, finished
    images keep their results; the job reads `cancelled` within seconds."""
    records.cancel(job)
    return records.job_state(job), 202


@bp.get("/<job>/results")
@doc(query=ResultsQuery, resp={"HTTP_200": ResultsPage}, errors=(404, 422), tags=["jobs"])
def results(job: str):
    """Per image: prediction and presigned `png` / `npy` URLs per method (`?page=1&per_page=50`)."""
    state, manifest = records.state_and_manifest(job)
    q = intake.read_query(ResultsQuery)
    page, per_page = q.page, q.per_page
    items, more = records.items_page(job, manifest, state.status, page, per_page)
    nxt = url_for("jobs.results", job=job, page=page + 1, per_page=per_page) if more else None
    extras = records.extras_of(clients.get().storage, job) if page == 1 else {}
    return {"job": job, "status": str(state.status), "page": page, "per_page": per_page,
            "total": len(manifest["inputs"]), "items": items, "extras": extras, "next": nxt}

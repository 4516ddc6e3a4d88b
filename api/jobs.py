"""/v1/jobs: submit, list, poll, results, cancel, delete."""
from __future__ import annotations

from flask import Blueprint, request, url_for

from api import connections, intake, records, submit
from api.errors import ApiError
from api.openapi import doc, multipart
from shared.schemas import PurgeQuery, JobCreated, JobList, JobSpec, JobView, ListQuery, ResultsPage, ResultsQuery

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")


@bp.post("")
@doc(json=JobSpec, form=multipart({"spec": "the job spec (JobSpec) as JSON; send it before the files"},
                                  files="images", required=("spec",)),
     resp={"HTTP_202": JobCreated}, errors=(400, 404, 409, 413, 415, 422, 429), tags=["jobs"])
def create_job():
    """Submit a bulk job: multipart images (streamed, any number) + a `spec` field, or a JSON spec whose
    `inputs` name your uploads."""
    if request.mimetype == "multipart/form-data":
        request.max_content_length = int(connections.get().settings.max_dataset_gb * 2**30)
        job, answer = submit.job_from_stream()
    elif request.mimetype == "application/json":
        spec, _ = intake.read_spec(JobSpec)
        job, answer = submit.job_from_uploads(spec)
    else:
        raise ApiError(400, "send multipart/form-data with images and a 'spec' field, or a JSON body")
    return records.created(job, "job", answer)


@bp.get("")
@doc(query=ListQuery, resp={"HTTP_200": JobList}, errors=(422,), tags=["jobs"])
def list_jobs():
    """Your jobs and audits, newest first (`?limit=50&offset=0`)."""
    q = intake.read_query(ListQuery)
    return {"jobs": records.recent(q.limit, q.offset)}


@bp.get("/<job>")
@doc(resp={"HTTP_200": JobView}, errors=(404,), tags=["jobs"])
def get_job(job: str):
    """Status and progress of a job."""
    return records.job_state(job)


@bp.delete("/<job>")
@doc(query=PurgeQuery, resp={"HTTP_202": JobView}, errors=(404, 409), tags=["jobs"])
def cancel_job(job: str):
    """Cancel: no unit starts afterwards, running units stop at once (their compute process is
    stopped), finished images keep their results; the job reads `cancelled` within seconds.
    `?purge=1` on a job that has ended deletes everything it stored (inputs, results, report)."""
    if intake.read_query(PurgeQuery).purge in ("1", "true"):
        state = records.state_of(job)
        if not state.status.final:
            raise ApiError(409, f"job {job} is {state.status}: cancel it first, then purge it once it has ended")
        removed = connections.get().lifecycle.delete_objects(state.tenant, job)
        return {**records.view(state), "purged": removed}, 200
    connections.get().lifecycle.cancel(job, records.state_of(job).tenant)
    return records.job_state(job), 202


@bp.get("/<job>/results")
@doc(query=ResultsQuery, resp={"HTTP_200": ResultsPage}, errors=(404, 422), tags=["jobs"])
def results(job: str):
    """Per image: prediction and signed `png` / `npy` links per method (`?page=1&per_page=50`)."""
    state, m = records.state_and_manifest(job)
    q = intake.read_query(ResultsQuery)
    page, per_page = q.page, q.per_page
    items, more, extras = records.items_page(m, state.status, page, per_page)
    nxt = url_for("jobs.results", job=job, page=page + 1, per_page=per_page) if more else None
    return {"job": job, "status": str(state.status), "page": page, "per_page": per_page, "total": m.inputs.count,
            "name": m.name, "model": m.model, "model_version": m.model_version, "methods": m.methods,
            "items": items, "extras": extras, "next": nxt}

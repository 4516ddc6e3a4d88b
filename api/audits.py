"""/v1/audits: audit a whole dataset (one folder per class) and read its report."""
from __future__ import annotations

from flask import Blueprint, request

from api import clients, intake, records, submit
from api.errors import ApiError
from api.openapi import doc, multipart
from shared.schemas import AuditSpec, JobCreated, JobStatus

bp = Blueprint("audits", __name__, url_prefix="/v1/audits")


@bp.post("")
@doc(json=AuditSpec, form=multipart({"spec": "the audit spec (AuditSpec) as JSON"}, files="dataset", required=("spec",)),
     resp={"HTTP_202": JobCreated}, errors=(400, 404, 409, 413, 415, 422, 429), tags=["audits"])
def create_audit():
    """Audit a dataset: multipart with a `dataset` zip (one folder per class) and a `spec`
    field, or a JSON spec whose `dataset` is a folder of your uploads laid out `{folder}/{class}/{image}`."""
    spec, _ = intake.read_spec(AuditSpec)
    audit, gflop, limit = submit.submit_audit(spec, request.files.get("dataset"))
    return records.created(audit, "audit", gflop, limit)


@bp.get("/<audit>")
@doc(resp={"HTTP_200": JobStatus}, errors=(404,), tags=["audits"])
def get_audit(audit: str):
    """Status and progress of an audit (the report is written once every image is done)."""
    return records.audit_state(audit)


@bp.get("/<audit>/report")
@doc(resp={"HTTP_200": None}, errors=(404, 409), tags=["audits"])
def report(audit: str):
    """The report: `report` (report.json, schema in worker/audit/REPORT.md) and `html`, a
    presigned URL of the self-contained report.html."""
    state = records.audit_state(audit)
    if state["status"] != "succeeded":
        raise ApiError(409, f"audit {audit} is {state['status']}; the report is written when it succeeds")
    st, k = clients.get().storage, records.keys()
    return {"report": st.get_json(k.report(audit, "json")), "html": st.url(k.report(audit, "html"))}

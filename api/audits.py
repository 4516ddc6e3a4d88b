"""/v1/audits: audit a whole dataset (one folder per class) and read its report."""
from __future__ import annotations

from flask import Blueprint, request

from api import clients, intake, records
from api.errors import ApiError
from api.openapi import doc
from shared.schemas import AuditSpec, JobCreated, JobStatus
from shared.storage import keys

bp = Blueprint("audits", __name__, url_prefix="/v1/audits")


@bp.post("")
@doc(json=AuditSpec, resp={"HTTP_202": JobCreated}, errors=(400, 401, 404, 409, 413, 422), tags=["audits"])
def create_audit():
    """Audit a dataset: multipart with a `dataset` zip (one folder per class) and a `spec`
    field, or a JSON spec whose `dataset` is a bucket prefix laid out `{prefix}/{class}/{image}`."""
    spec, _ = intake.read_spec(AuditSpec)
    audit = intake.submit_audit(spec, request.files.get("dataset"))
    links = records.links(audit, "audit")
    return {"id": audit, "status": "queued", "links": links}, 202, {"Location": links["self"]}


@bp.get("/<audit>")
@doc(resp={"HTTP_200": JobStatus}, errors=(401, 404), tags=["audits"])
def get_audit(audit: str):
    """Status and progress of an audit (the report is written once every image is done)."""
    return records.audit_state(audit)


@bp.get("/<audit>/report")
@doc(errors=(401, 404, 409), tags=["audits"])
def report(audit: str):
    """The report: `report` (report.json, schema in worker/audit/REPORT.md) and `html`, a
    presigned URL of the self-contained report.html."""
    state = records.audit_state(audit)
    if state["status"] != "succeeded":
        raise ApiError(409, f"audit {audit} is {state['status']}; the report is written when it succeeds")
    st = clients.get().storage
    return {"report": st.get_json(keys.report(audit, "json")), "html": st.url(keys.report(audit, "html"))}

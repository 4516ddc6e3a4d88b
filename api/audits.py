"""/v1/audits: audit a whole dataset (one folder per class) and read its report."""
from __future__ import annotations

from flask import Blueprint, Response, request, url_for

from api import auth, connections, intake, records, signing, submit
from api.errors import ApiError
from api.openapi import doc, multipart
from shared.schemas import AuditSpec, JobCreated, JobView

bp = Blueprint("audits", __name__, url_prefix="/v1/audits")


@bp.post("")
@doc(json=AuditSpec, form=multipart({"spec": "the audit spec (AuditSpec) as JSON; send it before the dataset"},
                                    files="dataset", required=("spec",)),
     resp={"HTTP_202": JobCreated}, errors=(400, 404, 409, 413, 415, 422, 429), tags=["audits"])
def create_audit():
    """Audit a dataset: multipart with a `spec` field and a `dataset` archive (a zip or an
    uncompressed tar, one folder per class, kept whole and read by ranges), or a JSON spec whose
    `dataset` is a folder of your uploads laid out `{folder}/{class}/{image}`."""
    if request.mimetype == "multipart/form-data":
        request.max_content_length = int(connections.get().settings.max_dataset_gb * 2**30)
        audit, answer = submit.audit_from_stream()
    else:
        spec, _ = intake.read_spec(AuditSpec)
        audit, answer = submit.audit_from_uploads(spec)
    return records.created(audit, "audit", answer)


@bp.get("/<audit>")
@doc(resp={"HTTP_200": JobView}, errors=(404,), tags=["audits"])
def get_audit(audit: str):
    """Status and progress of an audit (the report is written once every image is done)."""
    return records.audit_state(audit)


@bp.get("/<audit>/report")
@doc(resp={"HTTP_200": None}, errors=(404, 409), tags=["audits"])
def report(audit: str):
    """The report: `report` (report.json, schema in worker/audit/REPORT.md) and `html`, a signed
    link of the self-contained report.html."""
    state = records.audit_state(audit)
    if state["status"] != "succeeded":
        raise ApiError(409, f"audit {audit} is {state['status']}; the report is written when it succeeds")
    st, k = connections.get().storage, records.keys()
    html = signing.sign(url_for("audits.report_html", audit=audit, _external=True), auth.current())
    return {"report": st.get_json(k.report(audit, "json")), "html": html}


@bp.get("/<audit>/report.html")
@doc(errors=(404, 409), tags=["audits"])
def report_html(audit: str):
    """The self-contained report.html (served sandboxed: no scripts, no same-origin)."""
    state = records.audit_state(audit)
    if state["status"] != "succeeded":
        raise ApiError(409, f"audit {audit} is {state['status']}; the report is written when it succeeds")
    html = connections.get().storage.get(records.keys().report(audit, "html"))
    return Response(html, mimetype="text/html", headers={"Content-Security-Policy": auth.REPORT_POLICY})

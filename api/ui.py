"""Web pages, server-rendered (no front-end build): jobs, a job's gallery, audit reports."""
from __future__ import annotations

from flask import Blueprint, redirect, render_template, request, url_for

from api import clients, records
from shared.storage import keys

bp = Blueprint("ui", __name__)


@bp.get("/")
def index():
    return redirect(url_for("ui.jobs_page"))


@bp.get("/ui")
def jobs_page():
    if request.args.get("key"):  # keep the key as a cookie, and out of URLs and access logs
        resp = redirect(url_for("ui.jobs_page"))
        resp.set_cookie("xaiq_key", request.args["key"], httponly=True, samesite="Strict")
        return resp
    return render_template("jobs.html", jobs=records.recent(100))


@bp.get("/ui/jobs/<job>")
def job_page(job: str):
    state = records.job_state(job)
    st = clients.get().storage
    manifest = st.get_json(keys.job(job))
    page = max(request.args.get("page", 1, type=int), 1)
    per_page = 24
    indices = range((page - 1) * per_page, min(page * per_page, len(manifest["inputs"])))
    items = [records.item_of(st, job, i, manifest, state["status"]) for i in indices]
    for item in items:
        item["input_url"] = st.url(manifest["inputs"][item["index"]]["key"])
    more = indices.stop < len(manifest["inputs"])
    return render_template("job.html", job=state, items=items, methods=list(state["methods"]),
                           extras=records.extras_of(st, job), page=page, more=more)


@bp.get("/ui/audits/<audit>")
def audit_page(audit: str):
    state = records.audit_state(audit, page=True)
    st = clients.get().storage
    html = st.get(keys.report(audit, "html")).decode() if state["status"] == "succeeded" else None
    return render_template("audit.html", job=state, report_html=html)

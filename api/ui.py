"""Web pages, server-rendered (no front-end build): sign-in, jobs, a job's gallery, audit
reports. A page without a valid session redirects to the sign-in page."""
from __future__ import annotations

from flask import Blueprint, redirect, render_template, request, url_for

from api import auth, clients, intake, records
from api.errors import ApiError
from api.openapi import doc, multipart
from shared.schemas import NextQuery, PageQuery

bp = Blueprint("ui", __name__)


def local_path(target: str | None) -> str:
    """Where to go after signing in: a plain path of this site, else the jobs page (no open redirect)."""
    return auth.same_site_path(target) or url_for("ui.jobs_page")


@bp.get("/")
def index():
    return redirect(url_for("ui.jobs_page"))


@bp.get("/ui/signin")
@doc(query=NextQuery, public=True, html=True, tags=["pages"])
def signin_page():
    """The sign-in page (HTML): a field for the key; it sets an HttpOnly session cookie."""
    return render_template("signin.html", next=local_path(request.args.get("next")), error=None)


@bp.post("/ui/signin")
@doc(form=multipart({"key": "an API key", "next": "the page to open"}, required=("key",)), public=True,
     html=True, redirects=True, errors=(400, 401, 413), tags=["pages"])
def signin():
    """Sign in with a key (form field `key`, `next` a path of this site)."""
    c = clients.get()
    key = request.form.get("key", "").strip()
    principal = c.tenants.principal(key) if key else None
    target = local_path(request.form.get("next"))
    if principal is None:
        return render_template("signin.html", next=target, error="That key is not valid."), 401
    resp = redirect(target)
    resp.set_cookie(auth.COOKIE, c.tenants.open_session(principal), httponly=True, samesite="Strict",
                    secure=request.is_secure, max_age=int(c.settings.session_hours * 3600))
    return resp


@bp.post("/ui/signout")
@doc(html=True, redirects=True, errors=(403,), tags=["pages"])
def signout():
    """End the browser session."""
    clients.get().tenants.close_session(request.cookies.get(auth.COOKIE, ""))
    resp = redirect(url_for("ui.signin_page"))
    resp.delete_cookie(auth.COOKIE)
    return resp


@bp.get("/ui")
@doc(html=True, tags=["pages"])
def jobs_page():
    """Your jobs and audits (HTML)."""
    return render_template("jobs.html", jobs=records.recent(100), tenant=auth.current().tenant)


@bp.get("/ui/jobs/<job>")
@doc(query=PageQuery, html=True, errors=(404, 422), tags=["pages"])
def job_page(job: str):
    """A job's images beside their maps (HTML)."""
    state, manifest = records.state_and_manifest(job)
    page = intake.read_query(PageQuery).page
    items, more, extras = records.items_page(manifest, state.status, page, per_page=24)
    for item in items:
        item["input_url"] = item.get("input") or url_for("results.item_input", job=job, index=item["index"])
    return render_template("job.html", job=records.view(state), items=items, methods=list(state.methods),
                           extras=extras, page=page, more=more, cancellable=not state.status.final)


@bp.post("/ui/jobs/<job>/cancel")
@doc(html=True, redirects=True, errors=(403, 404), tags=["pages"])
def cancel_page(job: str):
    """Cancel a job from its page (same-origin form)."""
    records.cancel(job)
    return redirect(url_for("ui.job_page", job=job))


@bp.get("/ui/audits/<audit>")
@doc(html=True, errors=(404,), tags=["pages"])
def audit_page(audit: str):
    """An audit's report (HTML)."""
    state = records.audit_state(audit, page=True)
    html = None
    if state["status"] == "succeeded":
        html = clients.get().storage.get(records.keys().report(audit, "html")).decode()
    return render_template("audit.html", job=state, report_html=html)


@bp.errorhandler(ApiError)
def _page_error(e: ApiError):
    return render_template("error.html", code=e.code, message=e.message), e.code

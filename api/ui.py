"""Web pages, server-rendered (no front-end build; small scripts under /static, none inline):
sign-in, jobs, a job's gallery, audit reports, submitting a job or an audit, models. A page
without a valid session redirects to the sign-in page; the pages' scripts call the /v1 API
with the session cookie, from this origin."""
from __future__ import annotations

import math
import time
from datetime import datetime, timezone

from flask import Blueprint, Response, redirect, render_template, request, url_for

from api import auth, connections, gallery, intake, records
from api.errors import ApiError
from api.openapi import doc, multipart
from shared.methods import METHODS
from shared.schemas import ARCHITECTURES, AuditOptions, NextQuery

bp = Blueprint("ui", __name__)
# Pages run only this site's scripts and styles; pictures also come from the storage's public endpoint.
def local_path(target: str | None) -> str:
    """Where to go after signing in: a plain path of this site, else the jobs page (no open redirect)."""
    return auth.same_site_path(target) or url_for("ui.jobs_page")


@bp.app_template_filter("when")
def when(ts: float | None) -> str:
    """A timestamp as ISO 8601 UTC (the pages' script shows it in the reader's time zone)."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds") if ts else ""


@bp.app_template_filter("seconds")
def seconds(s: float | None) -> str:
    if s is None:
        return ""
    s = max(0, int(round(s)))
    return f"{s // 3600}h {s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def duration(job: dict, now: float) -> tuple[float | None, str]:
    """(seconds, what): finished - started, the running time so far, or the wait so far."""
    if job.get("finished") and job.get("started"):
        return job["finished"] - job["started"], "took"
    if job.get("finished"):
        return job["finished"] - job["created"], "took"
    if job.get("started"):
        return now - job["started"], "running"
    return now - job["created"], "waiting"


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
    c = connections.get()
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
    connections.get().tenants.close_session(request.cookies.get(auth.COOKIE, ""))
    resp = redirect(url_for("ui.signin_page"))
    resp.delete_cookie(auth.COOKIE)
    return resp


@bp.get("/ui")
@doc(html=True, tags=["pages"])
def jobs_page():
    """Your jobs and audits (HTML): name, kind, model, status, progress, created, duration."""
    now = time.time()
    jobs = records.recent(100)
    for j in jobs:
        j["duration"] = duration(j, now)
    return render_template("jobs.html", jobs=jobs, tenant=auth.current().tenant,
                           busy=any(j["status"] in ("queued", "running") for j in jobs))


@bp.get("/ui/jobs/<job>")
@doc(query=gallery.GalleryQuery, html=True, errors=(404, 422), tags=["pages"])
def job_page(job: str):
    """A job's images beside their maps, with truth, prediction and filters (HTML)."""
    state, manifest = records.state_and_manifest(job)
    f = intake.read_query(gallery.GalleryQuery)
    classes = gallery.classes_of(manifest)
    scan, more, extras = None, False, {}
    if f.filtered:
        items, scan = gallery.filtered_page(manifest, state.status, f, classes)
    else:
        items, more = gallery.page(manifest, state.status, f.page, classes)
        extras = records.unit_extras(manifest, sorted({it["unit"] for it in items if "unit" in it}))
    for item in items:
        item["input_url"] = item.get("input") or url_for("results.item_input", job=job, index=item["index"])
    total = manifest.inputs.count
    return render_template("job.html", job=records.view(state), items=items, methods=list(state.methods),
                           extras=extras, f=f, more=more, scan=scan, classes=classes,
                           query=f.model_dump(exclude={"page", "start"}, exclude_defaults=True),
                           truth_known=any(it.get("truth") for it in items), total=total,
                           pages=max(1, math.ceil(total / gallery.PER_PAGE)), cancellable=not state.status.final)


@bp.post("/ui/jobs/<job>/cancel")
@doc(html=True, redirects=True, errors=(403, 404), tags=["pages"])
def cancel_page(job: str):
    """Cancel a job from its page (same-origin form)."""
    connections.get().lifecycle.cancel(job, records.state_of(job).tenant)
    return redirect(url_for("ui.job_page", job=job))


def curve_plot(curves: dict | None, width: int = 300, height: int = 180) -> dict | None:
    """SVG polyline points of a method's mean curves, x = fraction changed, y = probability."""
    if not curves:
        return None

    def points(ys: list[float]) -> str:
        return " ".join(f"{x * width:.1f},{(1 - min(max(y, 0.0), 1.0)) * height:.1f}"
                        for x, y in zip(curves["fraction"], ys))
    keys = ("deletion", "insertion", "deletion_random", "insertion_random")
    return {"n": curves["n"], "width": width, "height": height, **{k: points(curves[k]) for k in keys}}


@bp.get("/ui/audits/<audit>")
@doc(html=True, errors=(404,), tags=["pages"])
def audit_page(audit: str):
    """An audit's report (HTML): accuracy, mean deletion/insertion curves, examples per class,
    and the full report.html (sandboxed)."""
    state = records.audit_state(audit, page=True)
    report, examples, plots = None, [], {}
    if state["status"] == "succeeded":
        st = connections.get().storage
        report = st.get_json(records.keys().report(audit, "json"))
        manifest = records.state_and_manifest(audit)[1]
        plots = {m: curve_plot(s.get("curves")) for m, s in report["per_method"].items()}
        examples = gallery.examples(manifest, state["status"], report["classes"])
        for group in examples:
            for item in group["items"]:
                item["input_url"] = item.get("input") or url_for("results.item_input", job=audit,
                                                                 index=item["index"])
    return render_template("audit.html", job=state, report=report, plots=plots, examples=examples)


@bp.get("/ui/audits/<audit>/report")
@doc(html=True, errors=(404, 409), tags=["pages"])
def report_html(audit: str):
    """The audit's self-contained report.html, served sandboxed (no scripts, its own origin)."""
    state = records.audit_state(audit, page=True)
    if state["status"] != "succeeded":
        raise ApiError(409, f"audit {audit} is {state['status']}; the report is written when it succeeds")
    html = connections.get().storage.get(records.keys().report(audit, "html"))
    return Response(html, mimetype="text/html", headers={"Content-Security-Policy": auth.REPORT_POLICY})


def ready_models() -> list[dict]:
    return [m for m in records.available_models() if m.get("status") == "ready"]


def limits() -> dict:
    s = connections.get().settings
    return {"max_images": s.max_images_per_job, "max_upload_mb": s.max_upload_mb}


@bp.get("/ui/submit")
@doc(html=True, tags=["pages"])
def submit_page():
    """Submit a job (HTML): drop a folder or a zip, pick the model and the methods."""
    return render_template("submit.html", models=ready_models(), limits=limits())


def upload_folders() -> list[dict]:
    """Folders of the caller's uploads laid out `{folder}/{class}/{image}`: an audit's datasets
    (read from the uploads' folder indexes, one per folder and upload request)."""
    found: dict[str, set] = {}
    k = records.keys()
    for key in connections.get().storage.list(k.upload_indexes(), limit=10000):
        parts = (k.upload_folder(key) or "").split("/")
        if len(parts) >= 2:
            found.setdefault("/".join(parts[:-1]), set()).add(parts[-1])
    return [{"path": p, "classes": sorted(c)} for p, c in sorted(found.items())]


@bp.get("/ui/audits/new")
@doc(html=True, tags=["pages"])
def new_audit_page():
    """Start an audit (HTML): a zip of class folders or a folder of your uploads, the model,
    the methods and the audit options."""
    return render_template("audit_new.html", models=ready_models(), folders=upload_folders(), limits=limits(),
                           options_schema=AuditOptions.model_json_schema())


@bp.get("/ui/models")
@doc(html=True, tags=["pages"])
def models_page():
    """Your models and the shared ones (HTML), and a form to register one."""
    return render_template("models.html", models=records.available_models(), architectures=ARCHITECTURES,
                           admin=auth.current().admin)


def layer_uses(info: dict) -> list[dict]:
    """Each layer with, per layer method (Grad-CAM, filters), whether that method can read it and why not."""
    out = []
    for layer in info.get("layers", []):
        uses = {}
        for name in ("gradcam", "filters"):
            try:
                METHODS[name].check({"layer": layer["path"]}, info)
                uses[name] = None
            except ValueError as e:
                uses[name] = str(e).split(": ", 1)[-1]
        out.append({**layer, "uses": uses})
    return out


@bp.get("/ui/models/<name>")
@doc(html=True, errors=(404,), tags=["pages"])
def model_page(name: str):
    """A model (HTML): its versions with status and why one is invalid, its layers and what can use them."""
    info, scope = records.find_model(name)
    return render_template("model.html", model=info, scope=scope, layers=layer_uses(info))


@bp.errorhandler(ApiError)
def _page_error(e: ApiError):
    return render_template("error.html", code=e.code, message=e.message), e.code

"""Reading what the service stored, for the caller's tenant only: a job's or an audit's
state, its items with signed URLs, its per-unit pictures, a model's manifest. Another
tenant's object answers 404 exactly like one that does not exist. Blueprints share these;
they never import each other."""
from __future__ import annotations

import re

from flask import url_for

from api import auth, clients
from api.errors import ApiError
from shared.jobs import JobState, JobStatus
from shared.schemas import NAME
from shared.storage import Keys, Storage

JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def keys() -> Keys:
    return Keys(auth.current().tenant)


def links(job: str, kind: str = "job") -> dict:
    if kind == "audit":
        return {"self": url_for("audits.get_audit", audit=job), "page": url_for("ui.audit_page", audit=job),
                "report": url_for("audits.report", audit=job), "results": url_for("jobs.results", job=job)}
    return {"self": url_for("jobs.get_job", job=job), "results": url_for("jobs.results", job=job),
            "page": url_for("ui.job_page", job=job)}


def created(job: str, kind: str, gflop: float, limit: float):
    """The 202 answer to a submitted job or audit."""
    links_ = links(job, kind)
    return ({"id": job, "status": "queued", "links": links_, "cost": {"estimate": gflop, "limit": limit}}, 202,
            {"Location": links_["self"]})


def state_of(job: str) -> JobState:
    """The caller's job: live state from Redis, or its manifest when Redis no longer has it."""
    tenant = auth.current().tenant
    if not JOB_ID.match(job):
        raise ApiError(404, f"unknown job {job[:64]!r}")
    c = clients.get()
    state = c.jobs.get(job)
    if state is not None and state.tenant == tenant:
        return state
    m = c.storage.get_json_or_none(Keys(tenant).job(job))
    if m is None or m.get("tenant", tenant) != tenant:
        raise ApiError(404, f"unknown job {job!r}")
    return JobState.from_manifest(m)


def job_state(job: str) -> dict:
    state = state_of(job)
    return {**state.to_dict(), "links": links(job, state.kind)}


def audit_state(audit: str, page: bool = False) -> dict:
    """A job's state if it is an audit; 404 otherwise."""
    state = job_state(audit)
    if state["kind"] != "audit":
        where = f"/ui/jobs/{audit}" if page else f"GET /v1/jobs/{audit}"
        raise ApiError(404, f"unknown audit {audit!r} (it is a job: {where})")
    return state


def recent(limit: int = 50, offset: int = 0) -> list[dict]:
    """The caller's jobs and audits, newest first."""
    c, tenant = clients.get(), auth.current().tenant
    out = []
    for job in c.jobs.ids(tenant, offset, limit):
        state = c.jobs.get(job)
        if state and state.tenant == tenant:
            out.append({**state.to_dict(), "links": links(job, state.kind)})
    return out


def item_of(st: Storage, k: Keys, job: str, i: int, manifest: dict, job_status: str) -> dict:
    """An image's item.json with signed URLs of its files, or its pending/failed stand-in
    (no request context needed: it runs in a thread pool)."""
    item = st.get_json_or_none(k.item(job, i))
    name = manifest["inputs"][i]["name"]
    if item is None:
        status = {JobStatus.CANCELLED: "cancelled", JobStatus.FAILED: "failed",
                  JobStatus.SUCCEEDED: "failed"}.get(JobStatus(job_status), "pending")
        why = {"cancelled": "not run: the job was cancelled", "failed": "not run: its unit failed"}.get(status)
        return {"index": i, "name": name, "status": status, "error": why}
    item["methods"] = {m: {"png": st.url(k.item(job, i, f"{m}.png")), "npy": st.url(k.item(job, i, f"{m}.npy"))}
                       for m in item.get("methods", [])}
    return item


def extras_of(st: Storage, job: str) -> dict:
    """Signed URLs of the per-unit pictures (figures, filter visualisations), by `{unit}/{name}`."""
    prefix = keys().units(job)
    return {k[len(prefix):]: st.url(k) for k in st.list(prefix, limit=400) if k.endswith(".png")}


def manifest_of(job: str) -> dict:
    return clients.get().storage.get_json(keys().job(job))


def find_model(name: str) -> tuple[dict, str]:
    """A model the caller may use: its own first, then a shared one; (manifest, 'tenant' or 'shared')."""
    st = clients.get().storage
    if NAME.match(name):
        for scope, k in (("tenant", keys()), ("shared", Keys(None))):
            info = st.get_json_or_none(k.model(name))
            if info is not None:
                return info, scope
    raise ApiError(404, f"unknown model {name[:64]!r}: register it with POST /v1/models (see GET /v1/models)")

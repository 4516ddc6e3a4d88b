"""Reading what the service stored, for the caller's tenant only: a job's or an audit's
state, its items with signed URLs, its per-unit pictures, a model's manifest. Another
tenant's object answers 404 exactly like one that does not exist. Blueprints share these;
they never import each other. `cancel` is here too, for the API and the pages alike."""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

from flask import url_for

from api import auth, clients
from api.errors import ApiError
from shared.jobs import JobState, JobStatus
from shared.models import ModelRecords
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


def _live_state(job: str) -> JobState | None:
    """The caller's job from Redis; None when Redis no longer has it (404 for a malformed id)."""
    if not JOB_ID.match(job):
        raise ApiError(404, f"unknown job {job[:64]!r}")
    state = clients.get().jobs.get(job)
    return state if state is not None and state.tenant == auth.current().tenant else None


def _stored_manifest(job: str) -> dict:
    """The caller's job manifest; 404 when there is none."""
    tenant = auth.current().tenant
    m = clients.get().storage.get_json_or_none(Keys(tenant).job(job))
    if m is None or m.get("tenant", tenant) != tenant:
        raise ApiError(404, f"unknown job {job!r}")
    return m


def state_of(job: str) -> JobState:
    """The caller's job: live state from Redis, or its manifest when Redis no longer has it."""
    return _live_state(job) or JobState.from_manifest(_stored_manifest(job))


def state_and_manifest(job: str) -> tuple[JobState, dict]:
    """The caller's job and its manifest, the manifest read once."""
    state = _live_state(job)
    if state is not None:
        return state, manifest_of(job)
    m = _stored_manifest(job)
    return JobState.from_manifest(m), m


def view(state: JobState) -> dict:
    """A job's state as the API shows it: with its links."""
    return {**state.to_dict(), "links": links(state.id, state.kind)}


def job_state(job: str) -> dict:
    return view(state_of(job))


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
            out.append(view(state))
    return out


def cancel(job: str) -> None:
    """Cancel the caller's job: no unit starts afterwards; ended here if none runs."""
    state = state_of(job)
    c = clients.get()
    if c.jobs.cancel(job, state.tenant) == "cancelled":   # nothing ran: end it here
        c.end_job(job, JobStatus.CANCELLED)
    c.dispatch.drop_tenant_job(state.tenant, job)


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


def items_page(job: str, manifest: dict, job_status: str, page: int, per_page: int) -> tuple[list[dict], bool]:
    """The items of one page of a job's results, and whether more pages follow."""
    st, k, total = clients.get().storage, keys(), len(manifest["inputs"])
    indices = range(min((page - 1) * per_page, total), min(page * per_page, total))
    with ThreadPoolExecutor(8) as pool:
        items = list(pool.map(lambda i: item_of(st, k, job, i, manifest, job_status), indices))
    return items, indices.stop < total


def extras_of(st: Storage, job: str) -> dict:
    """Signed URLs of the per-unit pictures (figures, filter visualisations), by `{unit}/{name}`."""
    prefix = keys().units(job)
    return {k[len(prefix):]: st.url(k) for k in st.list(prefix, limit=400) if k.endswith(".png")}


def manifest_of(job: str) -> dict:
    return clients.get().storage.get_json(keys().job(job))


def available_models() -> list[dict]:
    """The models the caller may use: its own, then the shared ones (its own hide a shared one of the same name)."""
    st = clients.get().storage
    found: dict[str, dict] = {}
    for k in (keys(), Keys(None)):
        for info in ModelRecords(st, k).list():
            found.setdefault(info["name"], info)
    return list(found.values())


def find_model(name: str) -> tuple[dict, str]:
    """A model the caller may use: its own first, then a shared one; (manifest, 'tenant' or 'shared')."""
    st = clients.get().storage
    if NAME.match(name):
        for scope, k in (("tenant", keys()), ("shared", Keys(None))):
            info = ModelRecords(st, k).get(name)
            if info is not None:
                return info, scope
    raise ApiError(404, f"unknown model {name[:64]!r}: register it with POST /v1/models (see GET /v1/models)")

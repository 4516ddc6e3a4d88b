"""Reading what the service stored: a job's or an audit's state, its items with signed
URLs, its per-unit pictures, a model's manifest. Blueprints share these; they never
import each other."""
from __future__ import annotations

import re

from flask import url_for

from api import clients
from api.errors import ApiError
from shared.jobs import FINAL
from shared.storage import Storage, keys

JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def links(job: str, kind: str = "job") -> dict:
    if kind == "audit":
        return {"self": url_for("audits.get_audit", audit=job), "page": url_for("ui.audit_page", audit=job),
                "report": url_for("audits.report", audit=job), "results": url_for("jobs.results", job=job)}
    return {"self": url_for("jobs.get_job", job=job), "results": url_for("jobs.results", job=job),
            "page": url_for("ui.job_page", job=job)}


def job_state(job: str) -> dict:
    """Live state from Redis; the manifest in storage when Redis no longer has it. 404 if unknown."""
    if not JOB_ID.match(job):
        raise ApiError(404, f"unknown job {job!r}")
    c = clients.get()
    state = c.jobs.get(job)
    if state is None:
        m = c.storage.get_json_or_none(keys.job(job))
        if m is None:
            raise ApiError(404, f"unknown job {job!r}")
        state = {
            "id": job, "kind": m.get("kind", "job"), "name": m.get("name"), "status": m.get("status", "queued"),
            "model": m["model"], "methods": m["methods"],
            "progress": m.get("progress", {"total": len(m["inputs"]), "done": 0, "failed": 0}),
            "created": m["created"], "started": m.get("started"), "finished": m.get("finished"),
            "error": m.get("error"),
        }
    return {**state, "links": links(job, state["kind"])}


def audit_state(audit: str, page: bool = False) -> dict:
    """A job's state if it is an audit; 404 otherwise."""
    state = job_state(audit)
    if state["kind"] != "audit":
        where = f"/ui/jobs/{audit}" if page else f"GET /v1/jobs/{audit}"
        raise ApiError(404, f"unknown audit {audit!r} (it is a job: {where})")
    return state


def recent(limit: int = 50, offset: int = 0) -> list[dict]:
    """Jobs and audits, newest first."""
    jobs = clients.get().jobs
    out = []
    for job in jobs.ids(offset, limit):
        state = jobs.get(job)
        if state:
            out.append({**state, "links": links(job, state["kind"])})
    return out


def item_of(st: Storage, job: str, i: int, manifest: dict, job_status: str) -> dict:
    """An image's item.json with signed URLs of its files, or its pending/failed stand-in."""
    item = st.get_json_or_none(keys.item(job, i))
    name = manifest["inputs"][i]["name"]
    if item is None:
        if job_status not in FINAL:
            return {"index": i, "name": name, "status": "pending"}
        return {"index": i, "name": name, "status": "failed" if job_status == "failed" else "pending",
                "error": "not run: the job was cancelled" if job_status == "cancelled" else None}
    item["methods"] = {m: {"png": st.url(keys.item(job, i, f"{m}.png")), "npy": st.url(keys.item(job, i, f"{m}.npy"))}
                       for m in item.get("methods", [])}
    return item


def extras_of(st: Storage, job: str) -> dict:
    """Signed URLs of the per-unit pictures (figures, filter visualisations), by `{unit}/{name}`."""
    prefix = keys.units(job)
    return {k[len(prefix):]: st.url(k) for k in st.list(prefix)[:200] if k.endswith(".png")}


def model_manifest(name: str) -> dict:
    """A registered model's manifest; 404 if there is none."""
    info = clients.get().storage.get_json_or_none(keys.model(name)) if "/" not in name else None
    if info is None:
        raise ApiError(404, f"unknown model {name!r}: register it with POST /v1/models (see GET /v1/models)")
    return info

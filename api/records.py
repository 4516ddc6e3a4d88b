"""Reading what the service stored, for the caller's tenant only: a job's or an audit's state
and manifest, its items (from the units' records, with signed links to each item's files),
single items' files by range reads of the unit's shards, a model's manifest. Another tenant's
object answers 404 exactly like one that does not exist. Blueprints share these; they never
import each other. (Changes go through `shared.lifecycle.JobLifecycle`.)"""
from __future__ import annotations

import re
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from flask import url_for

from api import auth, connections, signing
from api.errors import ApiError
from shared.contracts import IndexPage, ItemRecord, JobManifest, UnitRecords
from shared.jobs import JobState, JobStatus
from shared.models import ModelRecords
from shared.schemas import NAME
from shared.shards import single_npy
from shared.storage import Keys, Storage

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_records_cache: OrderedDict = OrderedDict()   # (tenant, job, unit) -> UnitRecords (immutable once written)


def keys() -> Keys:
    return Keys(auth.current().tenant)


def links(job: str, kind: str = "job") -> dict:
    if kind == "audit":
        return {"self": url_for("audits.get_audit", audit=job), "page": url_for("ui.audit_page", audit=job),
                "report": url_for("audits.report", audit=job), "results": url_for("jobs.results", job=job)}
    return {"self": url_for("jobs.get_job", job=job), "results": url_for("jobs.results", job=job),
            "page": url_for("ui.job_page", job=job)}


def created(job: str, kind: str, answer: dict):
    """The 202 answer to a submitted job or audit."""
    links_ = links(job, kind)
    return ({"id": job, "status": "queued", "links": links_,
             "cost": {"estimate": answer["estimate"], "limit": answer["limit"]}, "skipped": answer["skipped"]},
            202, {"Location": links_["self"]})


def _live_state(job: str) -> JobState | None:
    """The caller's job from Redis; None when Redis no longer has it (404 for a malformed id)."""
    if not JOB_ID.match(job):
        raise ApiError(404, f"unknown job {job[:64]!r}")
    state = connections.get().jobs.get(job)
    return state if state is not None and state.tenant == auth.current().tenant else None


def _stored_manifest(job: str) -> JobManifest:
    """The caller's job manifest; 404 when there is none."""
    tenant = auth.current().tenant
    raw = connections.get().storage.get_json_or_none(Keys(tenant).job(job))
    m = JobManifest.model_validate(raw) if raw is not None else None
    if m is None or m.tenant != tenant:
        raise ApiError(404, f"unknown job {job!r}")
    return m


def state_of(job: str) -> JobState:
    """The caller's job: live state from Redis, or its manifest when Redis no longer has it."""
    return _live_state(job) or JobState.from_manifest(_stored_manifest(job))


def state_and_manifest(job: str) -> tuple[JobState, JobManifest]:
    """The caller's job and its manifest, the manifest read once."""
    state = _live_state(job)
    if state is not None:
        return state, _stored_manifest(job)
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
    c, tenant = connections.get(), auth.current().tenant
    out = []
    for job in c.jobs.ids(tenant, offset, limit):
        state = c.jobs.get(job)
        if state and state.tenant == tenant:
            out.append(view(state))
    return out


# --- results ------------------------------------------------------------------------------------

def unit_records(m: JobManifest, unit: int, st: Storage | None = None) -> UnitRecords | None:
    """What a unit stored (None while it has not); `st` where there is no app context (a thread)."""
    key = (m.tenant, m.id, unit)
    if key in _records_cache:
        _records_cache.move_to_end(key)
        return _records_cache[key]
    raw = (st or connections.get().storage).get_json_or_none(Keys(m.tenant).records(m.id, unit))
    if raw is None:
        return None
    rec = UnitRecords.model_validate(raw)
    _records_cache[key] = rec
    while len(_records_cache) > 16:
        _records_cache.popitem(last=False)
    return rec


def index_page(m: JobManifest, page: int) -> IndexPage:
    return IndexPage.model_validate(connections.get().storage.get_json(Keys(m.tenant).input_index(m.id, page)))


def item_path(job: str, i: int, method: str, ext: str) -> str:
    return url_for("results.item_file", job=job, index=i, filename=Keys.item_file(method, ext), _external=True)


def item_view(job: str, rec: UnitRecords, item: ItemRecord, methods: list[str]) -> dict:
    """An image's record as the API shows it: with signed links to its files."""
    p = auth.current()
    out = item.dump()
    fields = out.pop("fields", {})
    out.pop("row", None)
    out.pop("pictures", None)
    out.update(fields)
    out["timings"], out["precision"], out["worker"] = rec.timings, rec.precision, rec.worker
    out["precision_guard"] = rec.precision_guard
    out["unit"] = rec.unit
    if item.status == "done":
        out["methods"] = {m: {"png": signing.sign(item_path(job, item.index, m, "png"), p) if m in item.pictures
                              else None, "npy": signing.sign(item_path(job, item.index, m, "npy"), p)}
                          for m in methods if m in rec.maps}
    out["input"] = signing.sign(url_for("results.item_input", job=job, index=item.index, _external=True), p)
    return out


def pending(i: int, name: str, job_status: str) -> dict:
    status = {JobStatus.CANCELLED: "cancelled", JobStatus.FAILED: "failed",
              JobStatus.SUCCEEDED: "failed"}.get(JobStatus(job_status), "pending")
    why = {"cancelled": "not run: the job was cancelled", "failed": "not run: its unit failed"}.get(status)
    return {"index": i, "name": name, "status": status, "error": why}


def items_at(m: JobManifest, job_status: str, indices: list[int]) -> list[dict]:
    """Items of a job by index (their units' records read once each; names of images without
    a record from the index)."""
    units = sorted({i // m.unit_size for i in indices})
    st = connections.get().storage
    with ThreadPoolExecutor(8) as pool:
        recs = dict(zip(units, pool.map(lambda u: unit_records(m, u, st), units)))
    names: dict[int, str] = {}
    missing = [i for i in indices if recs[i // m.unit_size] is None]
    for pg in sorted({i // m.inputs.page_size for i in missing}):
        ip = index_page(m, pg)
        names.update({ip.first + k: e.name for k, e in enumerate(ip.entries)})
    out = []
    for i in indices:
        rec = recs[i // m.unit_size]
        out.append(pending(i, names.get(i, ""), job_status) if rec is None
                   else item_view(m.id, rec, rec.items[i - rec.first], list(m.methods)))
    return out


def items_page(m: JobManifest, job_status: str, page: int, per_page: int) -> tuple[list[dict], bool, dict]:
    """One page of a job's items, whether more pages follow, and the per-unit pictures of the
    page's units (`{unit}/{name}` -> signed link)."""
    total = m.inputs.count
    indices = list(range(min((page - 1) * per_page, total), min(page * per_page, total)))
    if not indices:
        return [], False, {}
    items = items_at(m, job_status, indices)
    return items, indices[-1] + 1 < total, unit_extras(m, sorted({it["unit"] for it in items if "unit" in it}))


def unit_extras(m: JobManifest, units: list[int]) -> dict[str, str]:
    """Signed links of the per-unit pictures (figures, filter visualisations), `{unit}/{name}`."""
    p, out = auth.current(), {}
    for u in units:
        r = unit_records(m, u)
        for name in (r.extras if r is not None else {}):
            out[f"{u}/{name}"] = signing.sign(url_for("results.unit_file", job=m.id, unit=u, filename=name,
                                                      _external=True), p)
    return out


def record_of(m: JobManifest, i: int) -> tuple[UnitRecords, ItemRecord]:
    """The record of image i; 404 while it has none."""
    if not 0 <= i < m.inputs.count:
        raise ApiError(404, f"job {m.id} has no image {i} (it has {m.inputs.count})")
    rec = unit_records(m, i // m.unit_size)
    if rec is None:
        raise ApiError(404, f"image {i} of job {m.id} has no results yet")
    return rec, rec.items[i - rec.first]


def item_npy(m: JobManifest, i: int, method: str) -> bytes:
    """Image i's raw map of a method as a .npy of its own (a range read of the unit's array shard)."""
    rec, item = record_of(m, i)
    shard = rec.maps.get(method)
    if shard is None or item.row is None:
        raise ApiError(404, f"image {i} has no {method} map" + (f": {item.error}" if item.error else ""))
    start = shard.offset + item.row * shard.row_bytes
    return single_npy(connections.get().storage.get_range(shard.key, start, start + shard.row_bytes), shard.shape)


def item_png(m: JobManifest, i: int, method: str) -> bytes:
    rec, item = record_of(m, i)
    span, key = item.pictures.get(method), rec.pictures.get(method)
    if span is None or key is None:
        raise ApiError(404, f"image {i} has no {method} picture" + ("" if m.pictures else " (the job asked for none)"))
    return connections.get().storage.get_range(key, span.offset, span.offset + span.length)


def item_input(m: JobManifest, i: int) -> bytes:
    """Image i as it was given (a range read of its shard, a kept archive's entry inflated)."""
    from shared.shards import Read, entry_bytes

    if not 0 <= i < m.inputs.count:
        raise ApiError(404, f"job {m.id} has no image {i} (it has {m.inputs.count})")
    page = index_page(m, i // m.inputs.page_size)
    e = page.entries[i - page.first]
    key = m.inputs.sources[e.source]
    raw = connections.get().storage.get_range(key, e.offset, e.offset + e.length)
    return entry_bytes(Read(key, e.offset, e.offset + e.length, []), raw, e, connections.get().settings.max_image_mb << 20)


def unit_file(m: JobManifest, unit: int, name: str) -> bytes:
    rec = unit_records(m, unit) if 0 <= unit < m.units else None
    span = rec.extras.get(name) if rec is not None else None
    if span is None or rec.extras_key is None:
        raise ApiError(404, f"unit {unit} of job {m.id} has no {name[:100]!r}")
    return connections.get().storage.get_range(rec.extras_key, span.offset, span.offset + span.length)


def available_models() -> list[dict]:
    """The models the caller may use: its own, then the shared ones (its own hide a shared one of the same name)."""
    st = connections.get().storage
    found: dict[str, dict] = {}
    for k in (keys(), Keys(None)):
        for info in ModelRecords(st, k).list():
            found.setdefault(info["name"], info)
    return list(found.values())


def find_model(name: str) -> tuple[dict, str]:
    """A model the caller may use: its own first, then a shared one; (manifest, 'tenant' or 'shared')."""
    st = connections.get().storage
    if NAME.match(name):
        for scope, k in (("tenant", keys()), ("shared", Keys(None))):
            info = ModelRecords(st, k).get(name)
            if info is not None:
                return info, scope
    raise ApiError(404, f"unknown model {name[:64]!r}: register it with POST /v1/models (see GET /v1/models)")


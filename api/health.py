"""/healthz (the process answers) and /readyz (Redis and storage answer, within 2 s even
when one of them hangs)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, wait

from flask import Blueprint

from api import clients
from api.openapi import doc
from shared.schemas import Health

bp = Blueprint("health", __name__)
_pool = ThreadPoolExecutor(4, thread_name_prefix="xaiq-ready")
DEADLINE_S = 1.5


@bp.get("/healthz")
@doc(resp={"HTTP_200": Health}, public=True, tags=["health"])
def healthz():
    """The API process is alive."""
    return {"status": "ok"}


def _check(ping) -> str:
    try:
        ping()
        return "ok"
    except Exception as e:  # noqa: BLE001 - report any failure as not ready
        return f"error: {type(e).__name__}"


@bp.get("/readyz")
@doc(resp={"HTTP_200": Health, "HTTP_503": Health}, public=True, tags=["health"])
def readyz():
    """Redis and object storage answer (503 if either is down or hung)."""
    c = clients.get()
    futures = {name: _pool.submit(_check, ping) for name, ping in (("redis", c.jobs.ping), ("storage", c.storage.ping))}
    wait(futures.values(), timeout=DEADLINE_S)
    checks = {name: f.result() if f.done() else f"error: no answer in {DEADLINE_S} s" for name, f in futures.items()}
    ok = all(v == "ok" for v in checks.values())
    return {"status": "ok" if ok else "unavailable", "checks": checks}, 200 if ok else 503

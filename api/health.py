"""/healthz (the process answers; it asks nothing else) and /readyz (Redis and storage
answered this process's probes: the last answers, never a call made for the request)."""
from __future__ import annotations

from flask import Blueprint

from api import connections
from api.errors import RETRY_AFTER_S
from api.openapi import doc
from shared.schemas import Health

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@doc(resp={"HTTP_200": Health}, public=True, tags=["health"])
def healthz():
    """The API process is alive."""
    return {"status": "ok"}


@bp.get("/readyz")
@doc(resp={"HTTP_200": Health, "HTTP_503": Health}, public=True, tags=["health"])
def readyz():
    """Redis and object storage answer (503 if either is down or hung)."""
    c = connections.get()
    checks = {name: probe.state(c.settings.api_wait_s) for name, probe in c.probes.items()}
    ok = all(v == "ok" for v in checks.values())
    headers = {} if ok else {"Retry-After": str(RETRY_AFTER_S)}
    return {"status": "ok" if ok else "unavailable", "checks": checks}, 200 if ok else 503, headers

from __future__ import annotations

from flask import Blueprint

from api import clients
from api.openapi import doc
from shared.schemas import Health

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@doc(resp={"HTTP_200": Health}, tags=["health"])
def healthz():
    """The API process is alive."""
    return {"status": "ok"}


@bp.get("/readyz")
@doc(resp={"HTTP_200": Health, "HTTP_503": Health}, tags=["health"])
def readyz():
    """Redis and object storage answer."""
    c, checks = clients.get(), {}
    for name, ping in (("redis", c.jobs.ping), ("storage", c.storage.ping)):
        try:
            ping()
            checks[name] = "ok"
        except Exception as e:  # noqa: BLE001 - report any failure as not ready
            checks[name] = f"error: {type(e).__name__}: {e}"[:300]
    ok = all(v == "ok" for v in checks.values())
    return {"status": "ok" if ok else "unavailable", "checks": checks}, 200 if ok else 503

"""/v1/keys and /v1/tenants: tenants' API keys and limits (admin key); /v1/usage: your own."""
from __future__ import annotations

from flask import Blueprint

from api import auth, connections, intake
from api.errors import ApiError
from api.openapi import doc
from shared.schemas import KeyInfo, KeyList, KeyRequest, Limits, TenantInfo
from shared.tenants import valid_tenant

bp = Blueprint("keys", __name__, url_prefix="/v1")


@bp.post("/keys")
@doc(json=KeyRequest, resp={"HTTP_201": KeyInfo}, errors=(400, 403, 413, 422), tags=["keys"])
def create_key():
    """Make a key for a tenant (admin); the answer holds the key, shown this once."""
    auth.require_admin()
    req, _ = intake.read_spec(KeyRequest)
    try:
        record, key = connections.get().tenants.create_key(req.tenant, req.name)
    except ValueError as e:   # the tenant's name
        raise ApiError(422, str(e)) from None
    return {**record, "key": key}, 201


@bp.get("/keys")
@doc(resp={"HTTP_200": KeyList}, errors=(403,), tags=["keys"])
def list_keys():
    """Every tenant's keys (admin): ids, tenants, names; never the keys."""
    auth.require_admin()
    return {"keys": connections.get().tenants.keys()}


@bp.delete("/keys/<key_id>")
@doc(resp={"HTTP_200": None}, errors=(403, 404), tags=["keys"])
def revoke_key(key_id: str):
    """Revoke a key (admin): it and its browser sessions stop working at once."""
    auth.require_admin()
    if not connections.get().tenants.revoke(key_id[:64]):
        raise ApiError(404, f"unknown key {key_id[:64]!r}")
    return {"revoked": key_id}


def tenant_info(tenant: str) -> dict:
    c = connections.get()
    return {"tenant": tenant, "limits": c.tenants.limits(tenant), "usage": c.jobs.usage(tenant)}


@bp.get("/usage")
@doc(resp={"HTTP_200": TenantInfo}, tags=["keys"])
def usage():
    """Your limits and what your queued and running work holds of them."""
    return tenant_info(auth.current().tenant)


@bp.get("/tenants/<tenant>")
@doc(resp={"HTTP_200": TenantInfo}, errors=(403, 404), tags=["keys"])
def get_tenant(tenant: str):
    """A tenant's limits and usage (admin)."""
    auth.require_admin()
    if not valid_tenant(tenant):
        raise ApiError(404, f"unknown tenant {tenant[:64]!r}")
    return tenant_info(tenant)


@bp.put("/tenants/<tenant>/limits")
@doc(json=Limits, resp={"HTTP_200": TenantInfo}, errors=(400, 403, 404, 413, 422), tags=["keys"])
def set_limits(tenant: str):
    """Set a tenant's limits (admin); a limit given as null returns to the default."""
    auth.require_admin()
    if not valid_tenant(tenant):
        raise ApiError(404, f"unknown tenant {tenant[:64]!r}")
    req, _ = intake.read_spec(Limits)
    connections.get().tenants.set_limits(tenant, **{k: getattr(req, k) for k in req.model_fields_set})
    return tenant_info(tenant)

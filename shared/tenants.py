"""Tenants, their API keys and limits, and browser sessions, in Redis.

A key belongs to one tenant and is stored only as its SHA-256; it is shown once, when it
is made. The admin key (`XAIQ_API_KEY`) is not stored: it bootstraps the service and is
itself tenant `admin`. A browser session maps a random token (the HttpOnly cookie) to the
key it was opened with, so revoking the key ends its sessions.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass

import redis

from shared.redis_keys import RedisKeys
from shared.settings import Settings

TENANT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
ADMIN, OPEN = "admin", "default"    # the admin key's tenant; everyone's when no admin key is set
RESERVED = (ADMIN, OPEN)            # no key of its own: it would share that tenant's data
LIMITS = ("max_job_gflop", "max_tenant_gflop", "max_tenant_units", "max_tenant_jobs")


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant, and whether with the admin key."""

    tenant: str
    admin: bool = False
    key_id: str = ""


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def valid_tenant(name: str) -> bool:
    return bool(TENANT.match(name or ""))


class Tenants:
    def __init__(self, s: Settings, r: redis.Redis):
        self.settings, self.r, self.k = s, r, RedisKeys(s.redis_prefix)

    # --- keys
    def create_key(self, tenant: str, name: str = "") -> tuple[dict, str]:
        """(the key's record, key): the key is returned here only."""
        if not valid_tenant(tenant):
            raise ValueError("tenant: 1-63 lowercase letters, digits, '_' or '-', starting with a letter or digit")
        if tenant in RESERVED:
            raise ValueError(f"tenant: {tenant!r} is reserved (the data of the admin key, or of the API run "
                             f"without keys); a key for it would share that data: choose another name")
        key = "xq_" + secrets.token_urlsafe(24)
        h = digest(key)
        record = {"id": h[:12], "tenant": tenant, "name": name[:100], "created": time.time()}
        self.r.hset(self.k.api_keys, h, json.dumps(record))
        self.r.hset(self.k.key_ids, record["id"], h)
        return record, key

    def keys(self, tenant: str | None = None) -> list[dict]:
        records = [json.loads(v) for v in self.r.hvals(self.k.api_keys)]
        return sorted((r for r in records if tenant in (None, r["tenant"])), key=lambda r: r["created"])

    def revoke(self, key_id: str) -> bool:
        h = self.r.hget(self.k.key_ids, key_id)
        if not h:
            return False
        self.r.hdel(self.k.api_keys, h)
        self.r.hdel(self.k.key_ids, key_id)
        return True

    def principal(self, key: str) -> Principal | None:
        """The caller a presented key stands for; None for a wrong key."""
        s = self.settings
        if not s.api_key:
            return Principal(OPEN, admin=True)
        if key and hmac.compare_digest(key.encode(), s.api_key.encode()):
            return Principal(ADMIN, admin=True, key_id=self._admin_key_id())
        raw = self.r.hget(self.k.api_keys, digest(key)) if key else None
        if raw is None:
            return None
        record = json.loads(raw)
        if record["tenant"] in RESERVED:   # made before such names were refused: it would share their data
            return None
        return Principal(record["tenant"], key_id=record["id"])

    def _admin_key_id(self) -> str:
        return "admin:" + digest(self.settings.api_key)[:12]

    # --- limits and usage
    def limits(self, tenant: str) -> dict[str, float]:
        own = self.r.hgetall(self.k.tenant_limits(tenant))
        return {k: float(own[k]) if k in own else float(getattr(self.settings, k)) for k in LIMITS}

    def set_limits(self, tenant: str, **limits: float | None) -> dict[str, float]:
        """Set (a number) or reset to the default (None) each given limit."""
        key = self.k.tenant_limits(tenant)
        for name, value in limits.items():
            if name not in LIMITS:
                raise ValueError(f"unknown limit {name!r}; limits: {', '.join(LIMITS)}")
            if value is None:
                self.r.hdel(key, name)
            else:
                self.r.hset(key, name, float(value))
        return self.limits(tenant)

    # --- browser sessions
    def open_session(self, p: Principal) -> str:
        token = secrets.token_urlsafe(32)
        ttl = int(self.settings.session_hours * 3600)
        self.r.set(self.k.session(digest(token)), json.dumps([p.tenant, p.admin, p.key_id]), ex=ttl)
        return token

    def session(self, token: str) -> Principal | None:
        raw = self.r.get(self.k.session(digest(token))) if token else None
        if raw is None:
            return None
        tenant, admin, key_id = json.loads(raw)
        if not self.key_valid(key_id) or (not admin and tenant in RESERVED):
            return None    # its key was revoked (or the admin key changed)
        return Principal(tenant, admin, key_id)

    def key_valid(self, key_id: str) -> bool:
        """Whether the key with this id still works (a revoked key ends its sessions and links)."""
        if not self.settings.api_key:
            return key_id == ""
        if key_id.startswith("admin:"):
            return key_id == self._admin_key_id()
        return bool(key_id) and bool(self.r.hexists(self.k.key_ids, key_id))

    def close_session(self, token: str) -> None:
        if token:
            self.r.delete(self.k.session(digest(token)))

"""Signed result links: `?exp=&kid=&sig=` on a result's API path lets a plain GET (an <img>, a
download tool) read it without the key, for `url_expiry_s`, and only while the key the link
was made for is valid: revoking a key ends its links at once."""
from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlencode, urlparse

from api import connections
from shared.tenants import Principal


def _secret() -> bytes:
    s = connections.get().settings
    return hashlib.sha256(b"xaiq-links|" + s.s3_secret_key.encode() + b"|" + s.api_key.encode()).digest()


def _mac(path: str, tenant: str, kid: str, exp: int) -> str:
    return hmac.new(_secret(), f"{path}|{tenant}|{kid}|{exp}".encode(), hashlib.sha256).hexdigest()[:32]


def sign(url: str, p: Principal) -> str:
    """The URL (absolute or a path) with a signature of its path for the caller `p`."""
    exp = int(time.time()) + connections.get().settings.url_expiry_s
    path = urlparse(url).path
    return f"{url}?{urlencode({'exp': exp, 'kid': p.key_id, 't': p.tenant, 'sig': _mac(path, p.tenant, p.key_id, exp)})}"


def principal(path: str, args) -> Principal | None:
    """Who a signed link was made for, if its signature, expiry and key are valid."""
    try:
        exp, kid, tenant, sig = int(args.get("exp", "")), args.get("kid", ""), args.get("t", ""), args.get("sig", "")
    except ValueError:
        return None
    if not sig or exp < time.time() or not hmac.compare_digest(sig, _mac(path, tenant, kid, exp)):
        return None
    if not connections.get().tenants.key_valid(kid):
        return None
    return Principal(tenant, admin=False, key_id=kid)

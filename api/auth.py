"""Optional API key: with XAIQ_API_KEY set, /v1 and the pages need it
(`Authorization: Bearer KEY`, `X-API-Key: KEY`, or the `xaiq_key` cookie that
`/ui?key=KEY` sets for a browser before redirecting to a URL without the key)."""
from __future__ import annotations

import hmac

from flask import Flask, request

from api import clients
from api.errors import error_response

OPEN = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/static")


def presented_key() -> str:
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    from_url = request.args.get("key", "") if request.path == "/ui" else ""  # the pages' login link only
    return request.headers.get("X-API-Key") or from_url or request.cookies.get("xaiq_key") or ""


def init_app(app: Flask) -> None:
    @app.before_request
    def _check_key():
        key = clients.get().settings.api_key
        if not key or request.path.startswith(OPEN):
            return None
        if not hmac.compare_digest(presented_key().encode(), key.encode()):
            return error_response(401, "missing or wrong API key: send 'Authorization: Bearer <key>'")
        return None

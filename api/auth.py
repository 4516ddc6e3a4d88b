"""Who is calling. A request carries a tenant's key (`Authorization: Bearer KEY` or
`X-API-Key: KEY`) or, from a browser, the HttpOnly session cookie that the sign-in page
sets. The key never travels in a URL. A state-changing request authenticated by the
cookie must come from this origin (`Origin` or `Referer`), so other sites cannot
forge it (CSRF). Pages without a valid session go to the sign-in page."""
from __future__ import annotations

from urllib.parse import urlparse

from flask import Flask, g, redirect, request, url_for

from api import clients
from api.errors import ApiError, error_response
from shared.tenants import Principal

COOKIE = "xaiq_session"
OPEN = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/ui/signin", "/favicon.ico",
        "/static/")   # the pages' own CSS and scripts: the sign-in page needs them too
SAFE = ("GET", "HEAD", "OPTIONS")


def presented_key() -> str:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("X-API-Key", "").strip()


def is_page(path: str) -> bool:
    return path == "/" or path == "/ui" or path.startswith("/ui/")


def same_origin() -> bool:
    source = request.headers.get("Origin") or request.headers.get("Referer") or ""
    return bool(source) and urlparse(source).netloc == request.host


def current() -> Principal:
    """The caller of this request (set before every route that is not open)."""
    return g.principal


def require_admin() -> Principal:
    p = current()
    if not p.admin:
        raise ApiError(403, "this needs the admin key")
    return p


def identify() -> tuple[Principal | None, bool]:
    """(the caller or None, whether by the session cookie)."""
    c = clients.get()
    key = presented_key()
    if key or not c.settings.api_key:
        return c.tenants.principal(key), False
    return c.tenants.session(request.cookies.get(COOKIE, "")), True


def init_app(app: Flask) -> None:
    @app.before_request
    def _check_caller():
        if request.path.startswith(OPEN):
            return None
        principal, by_cookie = identify()
        if principal is None:
            if is_page(request.path) and request.method in SAFE:
                return redirect(url_for("ui.signin_page", next=request.path))   # no query: no key in a URL
            return error_response(401, "missing or wrong API key: send 'Authorization: Bearer <key>'")
        if by_cookie and request.method not in SAFE and not same_origin():
            return error_response(403, "cross-site request refused: send it from this site's pages")
        g.principal = principal
        return None

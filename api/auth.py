"""Who is calling. A request carries a tenant's key (`Authorization: Bearer KEY` or
`X-API-Key: KEY`) or, from a browser, the HttpOnly session cookie that the sign-in page
sets. The key never travels in a URL. A state-changing request authenticated by the
cookie must come from this origin (`Sec-Fetch-Site`, else `Origin` or `Referer`), so
other sites cannot forge it (CSRF). Pages without a valid session go to the sign-in page, and back to a path
of this site only. Every response carries headers that confine what a page may load."""
from __future__ import annotations

import base64
import hashlib
import re
from urllib.parse import unquote, urlsplit

from flask import Flask, g, redirect, request, url_for

from api import connections, signing
from api.errors import ApiError, error_response
from shared.tenants import Principal

COOKIE = "xaiq_session"
# Scripts from this site's files only; styles may be inline (the pages' own <style>); pictures from
# this site and data: URLs (the audit report's); no frames of this site elsewhere. /docs adds the
# hash of its template's one inline script. No Referer ever: it would carry a page's job id to
# whatever a page links to.
CSP = ("default-src 'none'; script-src 'self'{scripts}; style-src 'self'{styles}; img-src 'self' data:; "
       "connect-src 'self'; frame-src 'self'; form-action 'self'; frame-ancestors 'self'; base-uri 'none'; "
       "object-src 'none'")
# report.html is the worker's self-contained page (inline CSS, data: pictures): sandboxed, no scripts, and
# framed only by this site's audit page. A view that sets its own policy keeps it.
REPORT_POLICY = "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'self'"
HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)

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
    """The browser says the request comes from this origin: `Sec-Fetch-Site` where it sends one
    (it cannot be set by a page), else `Origin` or `Referer` (pages send no Referer: see HEADERS)."""
    site = request.headers.get("Sec-Fetch-Site")
    if site:
        return site == "same-origin"
    source = request.headers.get("Origin") or request.headers.get("Referer") or ""
    return bool(source) and urlsplit(source).netloc == request.host


PLAIN_PATH = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@/%?-]*$")   # printable ASCII: no space, backslash or #


def _decoded(target: str, rounds: int = 4) -> str | None:
    """`target` percent-decoded until it no longer changes; None if that takes more rounds."""
    for _ in range(rounds):
        target, before = unquote(target, errors="replace"), target
        if target == before:
            return target
    return None


def same_site_path(target: str | None) -> str | None:
    """`target` if it is a plain path of this site, else None. Browsers drop tabs and newlines
    inside a URL and read a backslash as a slash, so `/<TAB>/evil.com` or `/\\evil.com` would
    leave the site: any control character, space, backslash, non-ASCII, `//` or `..` is refused,
    also once percent-decoded (`/%09/evil.com`, `/%2F%2Fevil.com`, twice encoded or more)."""
    target = (target or "").strip()
    decoded = _decoded(target) if PLAIN_PATH.match(target) else None
    if decoded is None or not PLAIN_PATH.match(decoded) or urlsplit(decoded).netloc:
        return None
    if "//" in decoded or "/../" in decoded + "/":
        return None
    return target


def current() -> Principal:
    """The caller of this request (set before every route that is not open)."""
    return g.principal


def require_admin() -> Principal:
    p = current()
    if not p.admin:
        raise ApiError(403, "this needs the admin key")
    return p


def require_admin_key() -> Principal:
    """For an open route that only the admin may read: 401 without a valid key, 403 with a tenant's."""
    principal, _ = identify()
    if principal is None:
        raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'")
    if not principal.admin:
        raise ApiError(403, "this needs the admin key")
    return principal


def content_security_policy(resp) -> str:
    """The pages' policy: scripts, styles and pictures of this site only (pictures and maps
    are served by the API itself); /docs adds its template's one inline script (by hash) and
    Swagger UI's inline styles."""
    scripts = styles = ""
    if request.endpoint == "docs.docs_page":   # its template's own inline script; it renders no request data
        scripts = "".join(f" 'sha256-{base64.b64encode(hashlib.sha256(body).digest()).decode()}'"
                          for body in INLINE_SCRIPT.findall(resp.get_data()))
        styles = " 'unsafe-inline'"
    return CSP.format(scripts=scripts, styles=styles)


def identify() -> tuple[Principal | None, bool]:
    """(the caller or None, whether by the session cookie); a GET of a result may carry a
    signed link instead of a key (`api.signing`)."""
    c = connections.get()
    if request.method in ("GET", "HEAD") and "sig" in request.args:
        return signing.principal(request.path, request.args), False
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

    @app.after_request
    def _confine(resp):
        resp.headers.update(HEADERS)
        resp.headers.setdefault("Content-Security-Policy", content_security_policy(resp))
        return resp

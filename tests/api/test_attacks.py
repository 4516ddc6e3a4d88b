"""Attacks on the API, each performed: open redirects after sign-in, a hung Redis or S3 server
starving the API, /metrics read by strangers, a key for a reserved tenant, pages without a
content security policy. Each attack once succeeded; each test shows it no longer does."""
from __future__ import annotations

import html
import os
import re
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote, urljoin, urlsplit

import pytest
import requests

from tests.conftest import wait_final, wait_until

SITE = "http://xaiq.test"
# Known open-redirect payloads (PayloadsAllTheThings' list and its kin): schemes, protocol-relative
# URLs, backslashes, tabs, newlines and other controls that browsers drop, percent-encoded and
# twice-encoded slashes, unicode look-alikes, userinfo tricks.
PAYLOADS = [
    "//evil.com", "///evil.com", "////evil.com", "//evil.com/%2F..", "//evil.com@xaiq.test", "///\\;@evil.com",
    "/\\evil.com", "/\\/evil.com", "\\\\evil.com", "\\/evil.com", "/\\\\evil.com", "//\\evil.com",
    "/\t/evil.com", "/\n/evil.com", "/\r\n/evil.com", "/\r/evil.com", "\t//evil.com", "\n//evil.com",
    " //evil.com", "/ /evil.com", "/\x00/evil.com", "/\x0b/evil.com", "/\x0c/evil.com", "/\x1f/evil.com",
    "/\x7f/evil.com", "/%09/evil.com", "/%0a/evil.com", "/%0d%0a/evil.com", "/%00/evil.com", "/%20/evil.com",
    "/%2F/evil.com", "/%2f%2fevil.com", "%2F%2Fevil.com", "/%5Cevil.com", "/%5c%5cevil.com", "/%252F%252Fevil.com",
    "/%25252F%25252Fevil.com", "/%2509/evil.com", "/%E3%80%80/evil.com", "/%ef%bc%8f%ef%bc%8fevil.com",
    "/\u3000/evil.com", "/\u2028/evil.com", "/\u00a0/evil.com", "/\uff0f\uff0fevil.com", "\u3031evil.com",
    "https://evil.com", "http://evil.com", "http:evil.com", "http:/evil.com", "https:/\\evil.com", "HTTPS://evil.com",
    "evil.com", "javascript:alert(1)", "JaVaScRiPt:alert(1)", "data:text/html,<script>alert(1)</script>",
    "//evil%E3%80%82com", "/..//evil.com", "/ui/../..//evil.com", "/%2e%2e//evil.com", "/.%2e/%2fevil.com",
    "/ui\n\nSet-Cookie: a=b", "/ui\r\nLocation: https://evil.com", "/ui#//evil.com", "",
]
FINE = ["/ui", "/ui/jobs/" + "ab" * 16, "/ui/audits/" + "cd" * 16 + "?page=2"]
C0 = "".join(map(chr, range(33)))


def where_a_browser_lands(location: str) -> str:
    """The URL a browser opens for this Location on a page of SITE (WHATWG URL parsing: C0
    controls and spaces around it stripped, tabs and newlines inside removed, '\\' read as '/')."""
    cleaned = re.sub(r"[\t\n\r]", "", location.strip(C0)).replace("\\", "/")
    return urljoin(f"{SITE}/ui/signin", cleaned)


def assert_same_site_path(location: str, payload: str) -> None:
    assert location.startswith("/") and not location.startswith(("//", "/\\")), (payload, location)
    assert location.isascii() and not any(c in C0 or c == "\x7f" for c in location), (payload, location)
    assert urlsplit(where_a_browser_lands(location)).netloc == "xaiq.test", (payload, location)
    decoded = location
    for _ in range(5):
        decoded = unquote(decoded)
    assert "//" not in decoded and "\\" not in decoded, (payload, location)


@pytest.fixture()
def site(app):
    return app.test_client()


@pytest.mark.parametrize("payload", PAYLOADS + FINE, ids=repr)
def test_sign_in_never_leaves_the_site(site, tenant_key, payload):
    page = site.get("/ui/signin", query_string={"next": payload})
    assert page.status_code == 200
    hidden = html.unescape(re.search(r'name="next" value="([^"]*)"', page.get_data(as_text=True)).group(1))
    assert_same_site_path(hidden, payload)
    assert site.post("/ui/signin", data={"key": "wrong", "next": payload}).status_code == 401
    resp = site.post("/ui/signin", data={"key": tenant_key, "next": payload})
    assert resp.status_code == 302, (payload, resp.status_code)
    location = resp.headers["Location"]
    assert_same_site_path(location, payload)
    assert location == (payload if payload in FINE else "/ui"), (payload, location)   # else: the jobs page


def test_a_signed_out_page_link_comes_back_to_its_page(site, tenant_key):
    job_page = "/ui/jobs/" + "ef" * 16
    first = site.get(job_page)
    assert first.status_code == 302 and first.headers["Location"].startswith("/ui/signin?next=")
    nxt = unquote(first.headers["Location"].split("next=", 1)[1])
    back = site.post("/ui/signin", data={"key": tenant_key, "next": nxt})
    assert back.status_code == 302 and back.headers["Location"] == job_page


# --- a key for a reserved tenant would share that tenant's data

@pytest.fixture()
def as_admin(app, settings):
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {settings.api_key}"
    return c


@pytest.mark.parametrize("tenant", ["admin", "default"])
def test_no_key_for_a_reserved_tenant(as_admin, tenant):
    before = as_admin.get("/v1/keys").get_json()["keys"]
    resp = as_admin.post("/v1/keys", json={"tenant": tenant, "name": "attack"})
    assert resp.status_code == 422, resp.get_json()
    message = resp.get_json()["error"]["message"]
    assert "reserved" in message and tenant in message and "share" in message
    assert as_admin.get("/v1/keys").get_json()["keys"] == before
    assert as_admin.post("/v1/keys", json={"tenant": f"{tenant}2", "name": "fine"}).status_code == 201


def test_a_stored_key_of_a_reserved_tenant_is_refused(app, settings, as_admin):
    """A key made for 'admin' before the name was refused opens nothing."""
    import json as json_

    import redis

    from shared.redis_keys import RedisKeys
    from shared.tenants import digest

    key, k = "xq_made-before-the-fix", RedisKeys(settings.redis_prefix)
    r = redis.Redis.from_url(settings.redis_url)
    r.hset(k.api_keys, digest(key), json_.dumps({"id": "reserved0001", "tenant": "admin", "name": "", "created": 0}))
    r.hset(k.key_ids, "reserved0001", digest(key))
    try:
        c = app.test_client()
        assert c.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 401
        assert c.post("/ui/signin", data={"key": key}).status_code == 401
        assert as_admin.get("/v1/jobs").status_code == 200
    finally:
        r.hdel(k.api_keys, digest(key))
        r.hdel(k.key_ids, "reserved0001")


# --- /metrics

def test_metrics_need_the_admin_key_by_default(app, settings, tenant_key):
    assert settings.metrics_public is False
    c = app.test_client()
    assert c.get("/metrics").status_code == 401
    assert c.get("/metrics", headers={"Authorization": f"Bearer {tenant_key}"}).status_code == 403
    resp = c.get("/metrics", headers={"Authorization": f"Bearer {settings.api_key}"})
    assert resp.status_code == 200 and "xaiq_jobs_submitted_total" in resp.get_data(as_text=True)


def test_public_metrics_are_totals_without_tenants(settings, client, digits_model, digit_pngs):
    from api import create_app

    wait_final(client, client.submit(digit_pngs[0][:1], model="digits-cnn", methods={"saliency": {}}))
    app = create_app(settings.model_copy(update={"metrics_public": True}), reaper=False)
    resp = app.test_client().get("/metrics")
    text = resp.get_data(as_text=True)
    assert resp.status_code == 200
    assert float(re.search(r"^xaiq_jobs_submitted_total (\S+)$", text, re.MULTILINE)[1]) >= 1   # alice's job counts
    assert "alice" not in text and not re.search(r"\{[^}]*tenant", text)                       # but is not named


# --- headers that confine every page

def test_every_response_confines_the_page(app, settings, http, site):
    answers = {
        "json": http.get("/v1/jobs"), "error": site.get("/v1/jobs"), "404": http.get("/nowhere"),
        "405": http.put("/healthz"), "health": site.get("/healthz"), "redirect": site.get("/ui"),
        "page": site.get("/ui/signin"), "openapi": site.get("/openapi.json"), "docs": site.get("/docs"),
        "asset": site.get("/docs/assets/swagger-ui-bundle.js"),
    }
    for name, resp in answers.items():
        assert resp.headers["X-Content-Type-Options"] == "nosniff", name
        assert resp.headers["Referrer-Policy"] == "no-referrer", name
        csp = dict((d.split(" ", 1) + [""])[:2] for d in resp.headers["Content-Security-Policy"].split("; "))
        assert csp["default-src"] == "'none'" and csp["frame-ancestors"] == "'self'", name   # framed by this site only
        assert csp["img-src"] == "'self' data:", name      # pictures and maps come from the API itself
        assert csp["style-src"] == ("'self' 'unsafe-inline'" if name == "docs" else "'self'"), name
        scripts = csp["script-src"].split()
        assert scripts[0] == "'self'" and "'unsafe-inline'" not in scripts and "'unsafe-eval'" not in scripts, name
        assert len(scripts) == (2 if name == "docs" else 1), (name, scripts)   # /docs: its one inline script


def test_cookie_posts_trust_the_browsers_fetch_metadata(app, tenant_key):
    """Pages send no Referer (no-referrer), so the cross-site check reads `Sec-Fetch-Site`
    where the browser sends it, and Origin/Referer otherwise."""
    c = app.test_client()   # on http://localhost
    assert c.post("/ui/signin", data={"key": tenant_key}).status_code == 302    # the session cookie
    job = "/ui/jobs/" + "0" * 32 + "/cancel"
    refused = [{"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
               {"Sec-Fetch-Site": "cross-site", "Origin": "http://localhost"}, {"Origin": "http://evil.com"},
               {"Origin": "null"}, {}]
    for headers in refused:
        resp = c.post(job, headers=headers)
        assert resp.status_code == 403 and "cross-site" in resp.get_json()["error"]["message"], headers
    for headers in ({"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "same-origin", "Origin": "null"},
                    {"Origin": "http://localhost"}):
        assert c.post(job, headers=headers).status_code == 404, headers   # past the check: no such job


def test_pages_work_under_the_policy(stack, client, tenant_key, digits_model, digit_pngs):
    """Every page in Chromium: no policy violation, every picture (from storage) shows, the
    API page renders, and same-site form posts (sign-out) pass the cross-site check without
    a Referer."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("Chromium is missing: apt-get install chromium (scripts/test does it)")
    from playwright.sync_api import sync_playwright

    job = client.submit(digit_pngs[0][:2], model="digits-cnn", methods={"saliency": {}, "gradcam": {}})
    assert wait_final(client, job)["status"] == "succeeded"
    violations = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
        page.goto(f"{stack.api_url}/ui/jobs/{job}")
        page.wait_for_url("**/ui/signin**")
        page.fill("#key", tenant_key)
        page.click("#signin button[type=submit]")
        page.wait_for_url(f"**/ui/jobs/{job}")
        page.wait_for_load_state("networkidle")
        broken = page.eval_on_selector_all("img", "imgs => imgs.filter(i => !(i.complete && i.naturalWidth)).length")
        assert page.locator("img").count() >= 6 and broken == 0
        page.goto(f"{stack.api_url}/docs")
        page.wait_for_selector(".opblock", timeout=20000)
        page.goto(f"{stack.api_url}/ui")
        page.click("#signout")
        page.wait_for_url("**/ui/signin**")
        browser.close()
    assert violations == []


# --- a hung Redis or S3 server

class SilentServer:
    """A TCP server that never answers: a hung Redis or S3 server. Nothing accepts, so the
    kernel's backlog holds each connection a client makes (to the client it is open), and
    `connections()` counts them: what a call did is an event, not a duration."""

    def __init__(self):
        import socket

        self.sock = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.sock.setblocking(False)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.held = []

    def connections(self) -> int:
        """Connections made so far (each one taken from the backlog and held open)."""
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except BlockingIOError:
                return len(self.held)

    def close(self):
        for conn in self.held:
            conn.close()
        self.sock.close()


@pytest.fixture()
def silent_server():
    server = SilentServer()
    yield server
    server.close()


def hung_at(settings, address: str):
    return settings.model_copy(update={"redis_url": f"redis://{address}/0", "s3_endpoint": f"http://{address}"})


def test_every_api_call_to_a_silent_server_is_bounded(settings, silent_server):
    """Without any probe, one Redis call of the API waits `api_wait_s` once (one connection:
    no retry of a timeout), and a storage call stops within its budget of twice that."""
    import redis

    from shared.jobs import redis_client
    from shared.storage import Storage, StorageUnavailable

    s = hung_at(settings, silent_server.address)
    t = time.monotonic()
    with pytest.raises((redis.TimeoutError, redis.ConnectionError)):
        redis_client(s, patient=False).get("x")
    redis_s = time.monotonic() - t
    redis_connections = silent_server.connections()
    t = time.monotonic()
    with pytest.raises(StorageUnavailable):
        Storage(s).get("x")
    storage_s = time.monotonic() - t
    print(f"\nsilent server: a Redis call gave up after {redis_s:.2f} s ({redis_connections} connection), a "
          f"storage call after {storage_s:.2f} s (api_wait_s {s.api_wait_s} s)")
    assert redis_connections == 1, "a Redis call of the API retried its timeout"
    # The lower bounds are the timeouts honoured; the upper ones only catch a wait without
    # end (generous: a loaded 2-core machine adds seconds).
    assert s.api_wait_s * 0.9 <= redis_s < s.api_wait_s * 3 + 2
    assert s.api_wait_s * 0.9 <= storage_s < s.api_wait_s * 4 + 2


def test_a_known_outage_fails_at_once(settings, silent_server):
    """While `down()` names an outage, no call touches the network."""
    import redis

    from shared.jobs import redis_client
    from shared.storage import Storage, StorageUnavailable

    s = hung_at(settings, silent_server.address)
    t = time.monotonic()
    with pytest.raises(redis.ConnectionError, match="probe says"):
        redis_client(s, patient=False, down=lambda: "redis is down: the probe says so").get("x")
    with pytest.raises(StorageUnavailable, match="probe says"):
        Storage(s, down=lambda: "storage is down: the probe says so").get("x")
    print(f"\nboth calls failed in {time.monotonic() - t:.3f} s")
    assert silent_server.connections() == 0, "a call went to the network during a known outage"
    assert time.monotonic() - t < s.api_wait_s * 0.9     # so it did not wait for a timeout either


@pytest.fixture(scope="module")
def hangable(tmp_path_factory):
    """A stack of its own, as `xaiq up` runs it (Redis, the S3 server, the API under gunicorn
    with 2 processes x 8 threads; no worker), whose Redis and S3 server get stopped."""
    from client.sdk import Client
    from client.stack import Stack
    from shared.jobs import JobStore
    from shared.settings import Settings

    s = Stack(tmp_path_factory.mktemp("hangable"), api_port=0, s3_port=0, redis_port=0)
    try:
        s.start_redis()
        s.start_s3()
        s.start_api()
        key = Client(s.api_url, s.api_key).create_key("alice")["key"]
        job = "0f" * 16
        JobStore(Settings(redis_url=s.redis_url)).create(job, tenant="alice", kind="job", model="digits-cnn",
                                                         methods={"saliency": {}}, total=1, units=1)
        yield s, {"Authorization": f"Bearer {key}"}, job
    finally:
        s.stop()


def timed(url: str, headers: dict | None = None) -> tuple[int, float, str | None]:
    t = time.monotonic()
    try:
        r = requests.get(url, headers=headers, timeout=30)
        return r.status_code, time.monotonic() - t, r.headers.get("Retry-After")
    except requests.RequestException as e:
        return -1, time.monotonic() - t, type(e).__name__


def hang(stack, part: str, polled: str, headers: dict, unaffected: str) -> dict:
    """Stop `part` (SIGSTOP) for about 6 s: 40 concurrent polls of `polled` as it begins and 40
    more every second after, while /healthz is asked every 0.1 s; then SIGCONT, and time how
    long until the API serves again."""
    health, readiness, done = [], [], threading.Event()

    def sample():
        while not done.is_set():
            health.append(timed(f"{stack.api_url}/healthz"))
            readiness.append((time.monotonic() - t0, *timed(f"{stack.api_url}/readyz")))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    pgid = os.getpgid(stack.procs[part].pid)
    os.killpg(pgid, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        sampler.start()
        with ThreadPoolExecutor(40) as pool:
            first = list(pool.map(lambda _: timed(polled, headers), range(40)))
            later = []
            for _ in range(4):
                time.sleep(1)
                later += pool.map(lambda _: timed(polled, headers), range(40))
            time.sleep(max(0.0, 6 - (time.monotonic() - t0)))   # hung at least 6 s, however fast the polls
        ready = timed(f"{stack.api_url}/readyz")
        ready_body = requests.get(f"{stack.api_url}/readyz", timeout=10).json()
        other = timed(unaffected, headers)
    finally:
        os.killpg(pgid, signal.SIGCONT)
        t1 = time.monotonic()
        done.set()
        sampler.join()
    wait_until(lambda: timed(f"{stack.api_url}/readyz")[0] == 200 and timed(polled, headers)[0] == 200, 20,
               f"the API to serve again after {part} resumed")
    noticed = min((at + seconds for at, status, seconds, _ in readiness if status == 503), default=None)
    return {"first": first, "later": later, "health": health, "ready": ready, "ready_body": ready_body,
            "other": other, "recovered_s": time.monotonic() - t1, "noticed_s": noticed, "hung_s": t1 - t0,
            "ready_after": [status for at, status, *_ in readiness
                            if noticed is not None and noticed + 1 < at < t1 - t0]}


def report(part: str, m: dict) -> None:
    def worst(answers):
        return max(a[1] for a in answers)

    print(f"\n{part} hung: 40 polls as it began: slowest {worst(m['first']):.2f} s; 160 polls in the 4 s after: "
          f"slowest {worst(m['later']):.2f} s (statuses {sorted({p[0] for p in m['first'] + m['later']})}); "
          f"/healthz x{len(m['health'])}: slowest {worst(m['health']):.2f} s; first /readyz 503 "
          f"{m['noticed_s']:.2f} s after it hung; hung {m['hung_s']:.1f} s; served again {m['recovered_s']:.1f} s "
          f"after it resumed")


@pytest.mark.stack    # starts an API, Redis and the S3 server of its own
@pytest.mark.parametrize("part", ["redis", "s3"])
def test_a_hung_redis_or_storage_answers_503_at_once(hangable, part):
    """While Redis (or the S3 server) is stopped, requests that need it answer 503 with
    Retry-After (in about api_wait_s), /healthz and /readyz answer throughout, /readyz says 503
    from the probe; while only storage hangs, the job's state (in Redis) is still served; after
    SIGCONT the API serves again. A request that waited on the hung part would last until it
    resumed (6 s or more): the bounds sit well below that and well above what a loaded 2-core
    machine adds (the figures are printed)."""
    stack, headers, job = hangable
    job_url, uploads_url = f"{stack.api_url}/v1/jobs/{job}", f"{stack.api_url}/v1/uploads"
    polled = job_url if part == "redis" else uploads_url     # uploads are listed from storage
    # Each API process's probe has seen the previous test's hang end (one may lag the other).
    wait_until(lambda: all(timed(u, headers)[0] == 200 for _ in range(4) for u in (job_url, uploads_url)), 20,
               "every API process to serve before the hang")
    m = hang(stack, part, polled, headers, job_url)
    report(part, m)
    assert m["hung_s"] >= 6
    for status, seconds, retry_after in m["first"] + m["later"]:
        assert status == 503 and retry_after and seconds < 4.0, (status, seconds, retry_after)
    assert {h[0] for h in m["health"]} == {200} and max(h[1] for h in m["health"]) < 3.0
    assert m["ready"][0] == 503 and m["ready"][1] < 3.0
    assert m["noticed_s"] is not None and m["noticed_s"] < 4.0 and set(m["ready_after"]) == {503}
    assert m["ready_body"]["checks"][{"redis": "redis", "s3": "storage"}[part]].startswith("error")
    if part == "s3":
        assert m["other"][0] == 200 and m["other"][1] < 3.0, m["other"]

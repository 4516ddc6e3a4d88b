"""Real parts for the tests, layered like the code: a Redis server (`redis_url`), an S3
server (SeaweedFS, credentials checked; `settings`), and the API under gunicorn with a
Celery worker process (`stack`), each started once per session when a test needs it.

Each test is in one of three layers, marked at collection from the fixtures it uses
(transitively: `item.fixturenames` is the closure):

- pure (no marker): no Redis, S3, API or worker. While one runs, XAIQ_REDIS_URL and
  XAIQ_S3_ENDPOINT point at a closed port, so a test that reaches for a service fails
  instead of finding one on the machine.
- `services`: Redis and/or the S3 server (`redis_url`, `settings`, `app`: Flask's test
  client over real Redis and S3), no API process and no Celery worker.
- `stack`: the API under gunicorn and a Celery worker (`stack`, `admin`, `client`,
  `tenant_key`, `http`, `digits_model`, ...).

A test that starts processes itself carries its marker explicitly; a marker lower than its
fixtures need is an error.

    pytest -m "not stack and not services"     # pure: well under a minute
    pytest -m "not stack"                      # + Redis and S3
    pytest                                     # everything
"""
from __future__ import annotations

import io
import os
import secrets
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

LAYERS = ("services", "stack")            # lowest first
# The fixtures that put a test into a layer (the fixtures built on them are found through
# item.fixturenames, which holds every fixture a test needs, directly or not).
LAYER_FIXTURES = {
    "services": {"services", "redis_url", "settings", "app"},
    "stack": {"stack", "admin", "client", "other_client", "tenant_key", "http", "digits_model"},
}
NOWHERE = {"XAIQ_REDIS_URL": "redis://127.0.0.1:1/0", "XAIQ_S3_ENDPOINT": "http://127.0.0.1:1"}


def layer_of(item) -> str | None:
    """The layer a test's fixtures need, or an explicit marker of a higher one."""
    used = set(getattr(item, "fixturenames", ()))
    needed = [n for n in LAYERS if used & LAYER_FIXTURES[n]]
    marked = [n for n in LAYERS if item.get_closest_marker(n)]
    if needed and marked and LAYERS.index(marked[-1]) < LAYERS.index(needed[-1]):
        raise pytest.UsageError(f"{item.nodeid} is marked {marked[-1]} but uses "
                                f"{sorted(used & LAYER_FIXTURES[needed[-1]])}: mark it {needed[-1]}")
    found = needed + marked
    return max(found, key=LAYERS.index) if found else None


def pytest_collection_modifyitems(config, items):
    for item in items:
        layer = layer_of(item)
        if layer and not item.get_closest_marker(layer):
            item.add_marker(getattr(pytest.mark, layer))


@pytest.fixture(autouse=True)
def _pure_tests_reach_no_service(request, monkeypatch):
    """A test of no layer runs with Redis and S3 pointed at a closed port."""
    if any(request.node.get_closest_marker(n) for n in LAYERS):
        yield
        return
    from shared.settings import get_settings

    for name, value in NOWHERE.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _dump_logs(s) -> None:
    for log in s.logs.glob("*.log"):
        print(f"--- {log.name}\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def services(tmp_path_factory):
    """The session's processes, started on demand by the fixtures below: Redis alone for
    job-state tests, Redis and the S3 server for storage tests, the API and a worker on
    top of them for end-to-end tests."""
    from client.stack import Stack

    s = Stack(tmp_path_factory.mktemp("stack"), workers=1, api_port=0, s3_port=0, redis_port=0,
              api_key=secrets.token_urlsafe(12), torch_threads=1,
              extra_env={"XAIQ_UNIT_SIZE": "16", "XAIQ_UNIT_RETRIES": "1", "XAIQ_MODEL_INSPECT_TIMEOUT_S": "12",
                         "XAIQ_COMPUTE_GRACE_S": "10", "XAIQ_BATCH_MEASURE_S": "2"})
    yield s
    s.stop()
    if os.environ.get("CI"):
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copytree(s.logs, ARTIFACTS / "stack-logs", dirs_exist_ok=True)


@pytest.fixture(scope="session")
def redis_url(services) -> str:
    """A Redis server of the session's own."""
    services.start_redis()
    return services.redis_url


@pytest.fixture(scope="session")
def settings(services, redis_url):
    """Settings of the session's Redis and S3 server (also exported as XAIQ_* for the
    code under test that reads them from the environment)."""
    try:
        services.start_s3()
    except Exception:
        _dump_logs(services)
        raise
    for k, v in services.env().items():
        if k.startswith("XAIQ_"):
            os.environ[k] = v
    from shared.settings import Settings, get_settings

    get_settings.cache_clear()
    return Settings()


@pytest.fixture(scope="session")
def stack(services, settings):
    """The whole service: the API under gunicorn and one Celery worker process."""
    try:
        services.start_api()
        services.start_worker(0)
    except Exception:
        _dump_logs(services)
        raise
    return services


@pytest.fixture(scope="session")
def admin(stack):
    """The SDK with the admin key."""
    from client.sdk import Client

    return Client(stack.api_url, stack.api_key)


@pytest.fixture(scope="session")
def tenant_key(admin) -> str:
    """A key of tenant 'alice', the tenant most tests act as."""
    return admin.create_key("alice", "tests")["key"]


@pytest.fixture(scope="session")
def client(stack, tenant_key):
    """The SDK as tenant 'alice'."""
    from client.sdk import Client

    return Client(stack.api_url, tenant_key)


@pytest.fixture(scope="session")
def other_client(stack, admin):
    """The SDK as tenant 'bob', a stranger to alice."""
    from client.sdk import Client

    return Client(stack.api_url, admin.create_key("bob", "tests")["key"])


@pytest.fixture(scope="session")
def app(settings):
    from api import create_app

    return create_app(settings, reaper=False)


@pytest.fixture()
def http(app, tenant_key):
    """Flask's test client as tenant 'alice'."""
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {tenant_key}"
    return c


@pytest.fixture(scope="session")
def digits_model(admin):
    """The shipped digits CNN, registered as a shared model."""
    from client.cli import register_digits

    info = register_digits(admin)
    assert info["status"] == "ready", info
    return info


@pytest.fixture(scope="session")
def digit_pngs():
    """64 real digits as PNG bytes (32x32 grayscale) with their labels."""
    from worker.models.digits import digit_images

    images, labels = digit_images(64)
    out = []
    for i, img in enumerate(images):
        buf = io.BytesIO()
        img.save(buf, "PNG")
        out.append((f"digit-{i}.png", buf.getvalue()))
    return out, labels


@pytest.fixture(scope="session")
def digits_torch():
    """The digits model in this process, for independent reference computations."""
    from tests.zoo import digits_cnn

    return digits_cnn()


def to_model_input(png: bytes, mean=0.25, std=0.35) -> np.ndarray:
    arr = np.asarray(Image.open(io.BytesIO(png)).convert("L"), np.float32) / 255.0
    return ((arr - mean) / std)[None]


def wait_final(client, job: str, timeout: float = 240) -> dict:
    return client.wait(job, timeout=timeout, poll=0.2)


def wait_until(check, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached in {timeout} s")

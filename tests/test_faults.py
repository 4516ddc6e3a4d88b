"""Whatever process dies or stalls, no job is lost or frozen. A stack of its own (Redis,
the S3 server, the API and a worker, supervised as `xaiq up` does) runs a job while
each fault hits it; every test checks the job ends with every image explained once, and
prints how long the recovery took. Faults land on events, not on timers: a unit running
(in the job's running set), or a unit in the middle of writing its shards: every process
of this stack reaches S3 through a relay (`Gate`) that, once armed, passes the first
request to store one of the job's unit shards and holds every byte after it, so the
fault lands between a unit's first shard and its records however brief that moment is."""
from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import wait_until

pytestmark = pytest.mark.stack      # each test starts a stack of its own

LIME = {"lime": {"num_samples": 300, "n_segments": 40}}


class Gate(threading.Thread):
    """A TCP relay in front of the S3 server. `arm(pattern)`: the request whose bytes hold
    `pattern` goes through (its first chunk), then every byte any client sends is held until
    `release()`; `hit` is set at that moment."""

    def __init__(self, upstream_port: int):
        super().__init__(daemon=True)
        self.upstream = upstream_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.pattern: bytes | None = None
        self.hit, self.open = threading.Event(), threading.Event()
        self.open.set()
        self.start()

    def arm(self, pattern: bytes) -> None:
        self.hit.clear()
        self.pattern = pattern

    def release(self) -> None:
        self.pattern = None
        self.open.set()

    def run(self) -> None:
        while True:
            conn, _ = self.server.accept()
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError:
                conn.close()
                continue
            up.settimeout(None)
            threading.Thread(target=self._pump, args=(conn, up, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, conn, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if from_client:
                    self.open.wait()
                dst.sendall(data)
                if from_client and self.pattern and self.pattern in data:
                    self.pattern = None
                    self.open.clear()          # this request's first bytes went; the rest waits
                    self.hit.set()
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()


@pytest.fixture(scope="module")
def faulty(tmp_path_factory, digit_pngs):
    """A supervised stack with short leases, reaching S3 through a `Gate`; its admin and a tenant client."""
    from client.cli import register_digits
    from client.sdk import Client
    from client.stack import Stack

    s = Stack(tmp_path_factory.mktemp("faulty"), workers=1, api_port=0, s3_port=0, redis_port=0, torch_threads=1,
              extra_env={"XAIQ_LEASE_S": "6", "XAIQ_REAP_EVERY_S": "2", "XAIQ_UNIT_RETRIES": "1",
                         "XAIQ_CANCEL_GRACE_S": "2"})
    s.gate = Gate(s.s3_port)
    s.extra_env["XAIQ_S3_ENDPOINT"] = s.gate.url
    s.start()
    stop = threading.Event()

    def supervise():
        while not stop.wait(0.5):
            s.restart_dead()

    threading.Thread(target=supervise, daemon=True).start()
    admin = Client(s.api_url, s.api_key, timeout=60)
    register_digits(admin)
    client = Client(s.api_url, admin.create_key("faults")["key"], timeout=60)
    yield s, client
    stop.set()
    s.stop()


def children(pid: int) -> list[int]:
    kids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(p.name))
            except (OSError, IndexError):
                pass
    return kids


def all_done_once(client, job: str, n: int, timeout: float = 240) -> dict:
    state = client.wait(job, timeout=timeout, poll=0.3)
    assert state["status"] == "succeeded", state
    assert state["progress"] == {"total": n, "done": n, "failed": 0}, state
    items = list(client.results(job))
    assert sorted(it["index"] for it in items) == list(range(n))
    assert all(it["status"] == "done" for it in items)
    return state


def running_units(stack, job: str) -> set:
    import redis

    from shared.redis_keys import RedisKeys

    return redis.Redis.from_url(stack.redis_url, decode_responses=True).smembers(RedisKeys().job_running(job))


def held_mid_write(stack, job: str, timeout: float = 120) -> None:
    """Returns once a unit of the job has begun to store a shard: from then on S3 receives
    nothing until `stack.gate.release()`."""
    from shared.settings import Settings
    from shared.storage import Keys

    stack.gate.arm(f"PUT /{Settings().bucket}/{Keys('faults').jobs(job)}units/".encode())
    assert stack.gate.hit.wait(timeout), "no unit began to store a shard"


def submit_running(client, stack, pngs, methods=LIME, unit_size=8) -> str:
    """A job with a unit running when this returns (the fault lands in the middle of the job)."""
    job = client.submit(pngs, model="digits-cnn", methods=methods, unit_size=unit_size)
    wait_until(lambda: running_units(stack, job), 120, "a unit running")
    assert client.status(job)["status"] == "running", "the fault must land while the job runs"
    return job


def test_the_celery_main_process_killed(faulty, digit_pngs):
    stack, client = faulty
    job = submit_running(client, stack, digit_pngs[0][:24])
    t0 = time.monotonic()
    os.kill(stack.procs["worker0"].pid, signal.SIGKILL)           # the main process, not its child
    all_done_once(client, job, 24)
    print(f"celery main killed: job succeeded {time.monotonic() - t0:.1f} s later")


def test_a_worker_killed_three_times_loses_and_doubles_nothing(faulty, digit_pngs):
    stack, client = faulty
    pngs = [(f"{k}-{name}", png) for k, (name, png) in enumerate((digit_pngs[0] * 4)[:200])]
    job = client.submit(pngs, model="digits-cnn", methods={"saliency": {}, "lime": {"num_samples": 100,
                                                                                   "n_segments": 30}}, unit_size=10)
    t0 = time.monotonic()
    for _ in range(3):     # each time in the middle of storing a unit's shards
        held_mid_write(stack, job)
        try:
            for pid in children(stack.procs["worker0"].pid):
                os.kill(pid, signal.SIGKILL)                       # the process running a unit dies mid-write
        finally:
            stack.gate.release()
        wait_until(lambda: children(stack.procs["worker0"].pid), 60, "a new worker child")
    all_done_once(client, job, 200)
    records = [it["unit"] for it in client.results(job)]
    assert sorted(set(records)) == list(range(20))       # each unit's records: one run's, none half-written
    print(f"worker child killed 3 times mid-write: 200-image job succeeded in {time.monotonic() - t0:.1f} s")


def test_redis_killed_and_restarted(faulty, digit_pngs):
    stack, client = faulty
    before = {j["id"] for j in client.session.get(f"{client.server}/v1/jobs").json()["jobs"]}
    job = submit_running(client, stack, digit_pngs[0][:24])
    t0 = time.monotonic()
    stack.procs["redis"].send_signal(signal.SIGKILL)
    all_done_once(client, job, 24)
    print(f"redis killed: job succeeded {time.monotonic() - t0:.1f} s later")
    after = {j["id"] for j in client.session.get(f"{client.server}/v1/jobs").json()["jobs"]}
    assert before | {job} <= after                                 # the history survived (append-only file)


def test_storage_down_for_twenty_seconds_in_the_middle_of_a_write(faulty, digit_pngs):
    stack, client = faulty
    job = client.submit(digit_pngs[0][:24], model="digits-cnn", methods={"saliency": {}, **LIME}, unit_size=8)
    held_mid_write(stack, job)
    stack.held.add("s3")
    try:
        stack.procs["s3"].send_signal(signal.SIGTERM)
        stack.procs["s3"].wait(30)
    finally:
        stack.gate.release()                                        # the shard's bytes meet a stopped server
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 20:
            for method, path in (("GET", f"/v1/jobs/{job}/results"), ("GET", "/v1/models"), ("GET", "/readyz")):
                r = client.session.request(method, f"{client.server}{path}", timeout=10)
                assert r.status_code == 503, (path, r.status_code, r.text[:200])
            r = client.session.post(f"{client.server}/v1/jobs", files=[("images", digit_pngs[0][0])],
                                    data={"spec": '{"model": "digits-cnn"}'}, timeout=10)
            assert r.status_code == 503 and r.headers.get("Retry-After"), r.text[:200]
            time.sleep(2)
    finally:
        stack.held.discard("s3")
    all_done_once(client, job, 24)
    print(f"storage down 20 s: job succeeded {time.monotonic() - t0:.1f} s after the outage began")


def test_storage_hung_for_twenty_seconds(faulty, digit_pngs):
    stack, client = faulty
    job = submit_running(client, stack, digit_pngs[0][:24])
    pgid = os.getpgid(stack.procs["s3"].pid)
    os.killpg(pgid, signal.SIGSTOP)
    t0 = time.monotonic()
    slowest = 0.0
    try:
        # Each API process's health probe notices the hang (in about XAIQ_API_WAIT_S, each on its
        # own clock): waited for as an event, five 503s in a row.
        wait_until(lambda: all(requests.get(f"{stack.api_url}/readyz", timeout=10).status_code == 503
                               for _ in range(5)), 15, "/readyz to say 503")
        noticed = time.monotonic() - t0
        while time.monotonic() - t0 < 20:
            t = time.monotonic()
            r = requests.get(f"{stack.api_url}/readyz", timeout=10)
            slowest = max(slowest, time.monotonic() - t)
            # Answered from the probe: far quicker than the hang (generous for a loaded machine).
            assert r.status_code == 503 and time.monotonic() - t < 5, (r.status_code, time.monotonic() - t)
            time.sleep(2)
    finally:
        os.killpg(pgid, signal.SIGCONT)
    print(f"storage hung: /readyz said 503 {noticed:.1f} s after the hang began, then in at most {slowest:.2f} s")
    all_done_once(client, job, 24)
    print(f"storage hung 20 s: job succeeded {time.monotonic() - t0:.1f} s after the hang began")


def test_cancel_in_the_middle_of_the_only_unit(faulty, digit_pngs):
    stack, client = faulty
    slow = {"lime": {"num_samples": 4000, "n_segments": 40}}   # the unit lasts seconds, not a blink
    job = client.submit(digit_pngs[0][:16], model="digits-cnn", methods={"saliency": {}, **slow}, unit_size=16)
    wait_until(lambda: running_units(stack, job), 60, "the only unit running")   # its 64,000 LIME passes ahead
    t0 = time.monotonic()
    assert client.cancel(job)["status"] in ("running", "cancelled")
    state = client.wait(job, timeout=60, poll=0.1)
    print(f"cancel of a running unit: cancelled in {time.monotonic() - t0:.1f} s")
    assert state["status"] == "cancelled"
    items = list(client.results(job))
    assert {it["status"] for it in items} == {"cancelled"}          # its half-written run is never read
    assert state["progress"]["done"] == 0
    after = client.submit(digit_pngs[0][:2], model="digits-cnn", methods={"saliency": {}})
    all_done_once(client, after, 2, timeout=60)      # the only worker is free again: its compute was stopped
    print(f"the next job done {time.monotonic() - t0:.1f} s after the cancel")
    assert client.status(job)["status"] == "cancelled"               # and the cancelled job stays so


def test_the_api_master_killed(faulty, digit_pngs):
    stack, client = faulty
    job = client.submit(digit_pngs[0][:16], model="digits-cnn", methods=LIME, unit_size=8)
    old = stack.procs["api"]
    t0 = time.monotonic()
    old.send_signal(signal.SIGKILL)
    wait_until(lambda: stack.procs["api"] is not old and _answers(stack.api_url), 60, "a new API master")
    print(f"API master killed: a new master answers on the same port after {time.monotonic() - t0:.1f} s")
    all_done_once(client, job, 16)


def _answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=1).ok
    except requests.RequestException:
        return False

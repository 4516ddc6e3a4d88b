"""The API's connections (Redis, storage, Celery), kept in `app.extensions`, and the probes
that watch Redis and storage. The API is impatient: a call waits at most `api_wait_s`, and
while a probe says its part is down every call to it fails at once (503), so requests that
need a hung part never hold the request threads that /healthz and everything else need."""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from functools import cached_property

from flask import Flask, current_app

from shared.backends import Backends
from shared.jobs import JobStore, redis_client, release_waiting
from shared.storage import Storage
from shared.storage import release_waiting as release_storage

log = logging.getLogger("xaiq")


class Probe:
    """One part's health, asked by a background thread of this process every `every` s;
    `down()` says why the part is down (no call to it) once `misses` probes in a row got no
    answer, and is empty again at the first answer. One late answer on a loaded machine is
    not an outage: it would turn every request that needs the part into a 503."""

    misses = 2

    def __init__(self, name: str, connect, every: float, on_down=None):
        """`connect()` makes this process's own client (never the requests' pool) and returns its ping."""
        self.name, self.connect, self.every, self.on_down = name, connect, every, on_down
        self.error: str | None = None
        self.checked = threading.Event()
        self._pid = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the thread, once per process (a forked process starts its own)."""
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self.checked = threading.Event()
                threading.Thread(target=self._loop, name=f"xaiq-probe-{self.name}", daemon=True).start()

    def _loop(self) -> None:
        ping, missed, error = None, 0, None
        while True:
            try:
                ping = ping or self.connect()
                ping()
                missed = 0
            except Exception as e:  # noqa: BLE001 - any failure means down
                missed += 1
                error = f"{self.name} is down (its probe got {type(e).__name__})"
            if not 0 < missed < self.misses:            # an answer, or enough misses in a row
                self._record(error if missed else None)
            time.sleep(self.every)

    def _record(self, error: str | None) -> None:
        before, self.error = self.error, error
        self.checked.set()
        if error and not before:
            log.warning("%s: requests that need it answer 503 until it answers again", error)
            if self.on_down:
                self.on_down()
        elif before and not error:
            log.warning("%s answers again", self.name)

    def down(self) -> str:
        self.start()
        return self.error or ""

    def state(self, wait_s: float) -> str:
        """'ok' or 'error: why', from the last answer (waiting up to `wait_s` for the first)."""
        self.start()
        if not self.checked.wait(wait_s):
            return f"error: {self.name} has not answered the probe yet"
        return f"error: {self.error}" if self.error else "ok"


@dataclass
class ApiBackends(Backends):
    """Backends whose Redis and storage clients consult the probes."""

    def __post_init__(self):
        s = self.settings
        quick = s.model_copy(update={"api_wait_s": s.api_wait_s / 2})   # a probe gives up sooner than a request
        every = s.api_wait_s / 4
        self.probes = {
            "redis": Probe("redis", lambda: redis_client(quick, False).ping, every, on_down=self._release_redis),
            "storage": Probe("storage", lambda: Storage(quick).ping, every, on_down=release_storage),
        }
        self._storage: tuple[int, Storage] | None = None

    def _release_redis(self) -> None:
        release_waiting(self.jobs.r)

    @cached_property
    def jobs(self) -> JobStore:
        return JobStore(self.settings, client=redis_client(self.settings, False, down=self.probes["redis"].down))

    @property
    def storage(self) -> Storage:
        if self._storage is None or self._storage[0] != os.getpid():   # the minio client is not fork-safe
            self._storage = (os.getpid(), Storage(self.settings, down=self.probes["storage"].down))
        return self._storage[1]


def init_app(app: Flask, settings) -> None:
    app.extensions["xaiq"] = ApiBackends(settings, patient=False)


def get() -> Backends:
    return current_app.extensions["xaiq"]

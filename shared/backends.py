"""The connections every xaiq process holds (object storage, the job store, the dispatcher,
the tenants, Celery), the job lifecycle built on them, queueing work and the reaper."""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from functools import cached_property

from celery import Celery

from shared.contracts import WorkItem
from shared.dispatch import Dispatcher
from shared.jobs import JobStore
from shared.lifecycle import JobLifecycle
from shared.messaging import WORK, make_celery, queued_tokens
from shared.redis_keys import RedisKeys
from shared.settings import Settings
from shared.storage import Storage, storage
from shared.tenants import Tenants

log = logging.getLogger("xaiq")


@dataclass
class Backends:
    settings: Settings
    patient: bool = False    # workers wait out outages (retries); the API answers 503 at once

    @property
    def storage(self) -> Storage:
        return storage(self.settings, self.patient)  # one per process, also after a fork

    @cached_property
    def keys(self) -> RedisKeys:
        return RedisKeys(self.settings.redis_prefix)

    @cached_property
    def jobs(self) -> JobStore:
        return JobStore(self.settings, patient=self.patient)

    @cached_property
    def dispatch(self) -> Dispatcher:
        return Dispatcher(self.jobs.r, self.keys)

    @cached_property
    def lifecycle(self) -> JobLifecycle:
        return JobLifecycle(self)

    @cached_property
    def tenants(self) -> Tenants:
        return Tenants(self.settings, self.jobs.r)

    @cached_property
    def celery(self) -> Celery:
        return make_celery(self.settings)

    def send_tokens(self, n: int) -> None:
        """n anonymous `xaiq.work` messages: each lets a worker take one waiting item."""
        if n <= 0:
            return
        with self.celery.producer_or_acquire() as producer:
            for _ in range(n):
                self.celery.send_task(WORK, producer=producer)

    def enqueue(self, tenant: str, items: list[WorkItem], front: bool = False) -> None:
        self.dispatch.push(tenant, items, front)
        self.send_tokens(len(items))

    def reap(self) -> dict[str, int]:
        """One reaper pass, by one process at a time: items with lapsed leases queued again,
        lost tokens replaced, cancelled jobs whose units went silent ended."""
        ttl_ms = int(self.settings.reap_every_s * 900)
        if not self.jobs.r.set(self.keys.reaper, os.getpid(), nx=True, px=ttl_ms):
            return {}
        requeued = self.dispatch.reap()
        missing = self.dispatch.waiting() - queued_tokens(self.celery, self.settings.queue)
        self.send_tokens(missing)
        stuck = self.lifecycle.end_stuck_cancels()
        if requeued or missing > 0 or stuck:
            log.warning("reaper: %d item(s) queued again, %d token(s) sent, %d cancel(s) ended",
                        requeued, max(0, missing), stuck)
        return {"requeued": requeued, "tokens": max(0, missing), "cancelled": stuck}


def start_reaper(b: Backends) -> threading.Thread:
    """A daemon thread calling `b.reap()` every `reap_every_s` (errors are logged, not fatal)."""
    def loop():
        while True:
            time.sleep(b.settings.reap_every_s)
            try:
                b.reap()
            except Exception as e:  # noqa: BLE001 - Redis or storage may be down: try again next time
                log.warning("reaper: %r", e)

    t = threading.Thread(target=loop, name="xaiq-reaper", daemon=True)
    t.start()
    return t

"""What a worker process keeps between items: connections, the device, loaded (and
prepared) models, job manifests, an I/O thread pool, the measured batch sizes shared
through Redis, and the heartbeat that renews the current item's lease."""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property

import torch

from shared.backends import Backends
from shared.storage import Keys
from worker.explain.context import Sizer
from worker.explain.calibrate import MeasuredSizes
from worker.models.loading import LoadedModel, ModelCache, pick_device
from worker.models.prepare import Options

log = logging.getLogger("xaiq.worker")


class Heartbeat:
    """Renews the lease of the item this process works on, every third of the lease."""

    def __init__(self, b: Backends):
        self.b, self.item, self.lock = b, None, threading.Lock()
        threading.Thread(target=self._loop, name="xaiq-heartbeat", daemon=True).start()

    def _loop(self) -> None:
        while True:
            threading.Event().wait(self.b.settings.lease_s / 3)
            with self.lock:
                item = self.item
            if item is not None:
                try:
                    self.b.dispatch.renew(item, self.b.settings.lease_s)
                except Exception as e:  # noqa: BLE001 - Redis away: the lease may lapse, the item then runs again
                    log.warning("lease not renewed: %r", e)

    @contextlib.contextmanager
    def hold(self, item: dict):
        with self.lock:
            self.item = item
        try:
            yield
        finally:
            with self.lock:
                self.item = None
            self.b.dispatch.release(item)


class RedisSizes:
    """Measured batch sizes in one Redis hash that every worker reads, with a copy in this
    process; Redis away costs a measurement, never a unit."""

    KEY = "xaiq:batch-sizes"

    def __init__(self, r):
        self.r, self.local = r, {}

    def get(self, key: str) -> int | None:
        if key not in self.local:
            try:
                value = self.r.hget(self.KEY, key)
            except Exception as e:  # noqa: BLE001 - measured again instead
                log.warning("batch sizes not read: %r", e)
                return None
            if value is not None:
                self.local[key] = int(value)
        return self.local.get(key)

    def set(self, key: str, value: int) -> None:
        self.local[key] = int(value)
        try:
            self.r.hset(self.KEY, key, int(value))
        except Exception as e:  # noqa: BLE001 - kept in this process at least
            log.warning("batch size not shared: %r", e)


@dataclass
class WorkerContext(Backends):
    patient: bool = True     # storage and Redis outages are waited out
    manifests: OrderedDict = field(default_factory=OrderedDict)
    pid: int = field(default_factory=os.getpid)  # a forked child builds its own

    @cached_property
    def device(self) -> torch.device:
        return pick_device(self.settings.device)

    @cached_property
    def models(self) -> ModelCache:
        return ModelCache(self.settings.model_cache_size, Options.of(self.settings))

    @cached_property
    def io(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(self.settings.io_threads, thread_name_prefix="xaiq-io")

    @cached_property
    def batch_sizes(self) -> RedisSizes:
        return RedisSizes(self.jobs.r)

    def sizer(self, lm: LoadedModel) -> Sizer | None:
        """The model's measured batch sizes (None: the defaults, `XAIQ_BATCH_MEASURE_S` 0)."""
        budget = self.settings.batch_measure_s
        return MeasuredSizes(self.batch_sizes, lm.key, budget_s=budget, run=lm.run()) if budget > 0 else None

    @cached_property
    def heartbeat(self) -> Heartbeat:
        return Heartbeat(self)

    def manifest(self, tenant: str, job: str) -> dict:
        if job not in self.manifests:
            keys = Keys(tenant)
            m = self.storage.get_json(keys.job(job))
            if m.get("tenant") != tenant or not all(keys.owns(i["key"]) for i in m["inputs"]):
                raise ValueError(f"job {job}: its manifest names objects outside tenant {tenant!r}")
            self.manifests[job] = m
            while len(self.manifests) > 32:
                self.manifests.popitem(last=False)
        return self.manifests[job]

    def model(self, manifest: dict) -> LoadedModel:
        """The model version the job is bound to."""
        keys = Keys(None) if manifest.get("model_scope") == "shared" else Keys(manifest["tenant"])
        return self.models.get(self.storage, keys, manifest["model"], manifest["model_version"], self.device)

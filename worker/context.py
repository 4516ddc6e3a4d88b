"""What a broker process (a Celery worker's child) keeps between items: connections, its
compute processes (`worker.compute.client.ComputePool`), job manifests and index pages, the
models' records, an I/O thread pool, the measured batch sizes shared through Redis, and the
heartbeat that renews the current item's lease. It never loads a tenant's model itself."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property

from shared.backends import Backends
from shared.contracts import JobManifest, WorkItem
from shared.models import ModelRecords
from shared.storage import Keys
from worker.compute.client import Budget, Compute, ComputePool, model_key
from worker.inputs import IndexCache

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
    def hold(self, item: WorkItem):
        with self.lock:
            self.item = item
        try:
            yield
        finally:
            with self.lock:
                self.item = None
            self.b.dispatch.release(item)


class RedisSizes:
    """Measured batch sizes in one Redis hash that every worker reads (a compute process
    gets the ones of its model and sends back what it measured)."""

    def __init__(self, r, key: str):
        self.r, self.key, self.local = r, key, {}

    def of(self, model: str) -> dict[str, int]:
        """The sizes filed for a model (keys start with its content key)."""
        try:
            found = {k: int(v) for k, v in self.r.hscan_iter(self.key, match=f"{model}|*")}
            self.local.update(found)
        except Exception as e:  # noqa: BLE001 - measured again instead
            log.warning("batch sizes not read: %r", e)
        return {k: v for k, v in self.local.items() if k.startswith(f"{model}|")}

    def file(self, sizes: dict[str, int]) -> None:
        self.local.update(sizes)
        if sizes:
            try:
                self.r.hset(self.key, mapping={k: int(v) for k, v in sizes.items()})
            except Exception as e:  # noqa: BLE001 - kept in this process at least
                log.warning("batch sizes not shared: %r", e)


@dataclass
class WorkerContext(Backends):
    patient: bool = True     # storage and Redis outages are waited out
    manifests: OrderedDict = field(default_factory=OrderedDict)
    models: OrderedDict = field(default_factory=OrderedDict)
    pid: int = field(default_factory=os.getpid)  # a forked child builds its own

    @cached_property
    def io(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(self.settings.io_threads, thread_name_prefix="xaiq-io")

    @cached_property
    def compute_pool(self) -> ComputePool:
        return ComputePool(self.settings.compute_warm, self.settings.model_inspect_warm)

    @cached_property
    def batch_sizes(self) -> RedisSizes:
        return RedisSizes(self.jobs.r, self.keys.batch_sizes)

    @cached_property
    def index_pages(self) -> IndexCache:
        return IndexCache()

    @cached_property
    def heartbeat(self) -> Heartbeat:
        return Heartbeat(self)

    def manifest(self, tenant: str, job: str) -> JobManifest:
        """A job's manifest (cached: what a worker reads of it never changes while it runs)."""
        if job not in self.manifests:
            keys = Keys(tenant)
            m = JobManifest.model_validate(self.storage.get_json(keys.job(job)))
            if m.tenant != tenant or not all(keys.owns(src) for src in m.inputs.sources):
                raise ValueError(f"job {job}: its manifest names objects outside tenant {tenant!r}")
            self.manifests[job] = m
            while len(self.manifests) > 32:
                self.manifests.popitem(last=False)
        return self.manifests[job]

    def model_keys(self, m: JobManifest) -> Keys:
        return Keys(None) if m.model_scope == "shared" else Keys(m.tenant)

    def model_records(self, m: JobManifest) -> ModelRecords:
        """The records of the job's model (their one owner), under its owner's keys."""
        return ModelRecords(self.storage, self.model_keys(m), self.jobs.r, self.keys)

    def model_info(self, m: JobManifest) -> dict:
        """The record of the model version the job is bound to (versions never change)."""
        key = (m.model_scope, m.tenant if m.model_scope == "tenant" else "", m.model, m.model_version)
        if key not in self.models:
            info = self.model_records(m).version(m.model, m.model_version)
            if info is None:
                raise ValueError(f"model {m.model!r} version {m.model_version} was deleted")
            if info["status"] != "ready":
                raise ValueError(f"model {m.model!r} version {m.model_version} is {info['status']}")
            self.models[key] = info
            while len(self.models) > 64:
                self.models.popitem(last=False)
        return self.models[key]

    def content_key(self, info: dict) -> str:
        """What a model's measured batch sizes are filed under: its weights' content and format."""
        return f"{info.get('format')}:{info.get('weights_sha256', info.get('version'))}"

    def unit_budget(self, m: JobManifest, whole_job: bool = False) -> Budget:
        """A unit's time budget from the job's cost estimate (`whole_job`: an audit's report,
        which the estimate counts in full), and the memory ceiling."""
        s = self.settings
        gflop = m.cost if whole_job else m.cost / max(1, m.units)
        measuring = s.batch_measure_s * (len(m.methods) + 1)   # a first unit measures its batch sizes
        return Budget(seconds=s.compute_grace_s + gflop / s.compute_min_gflops + measuring,
                      memory_mb=s.compute_memory_mb)

    def compute(self, m: JobManifest) -> Compute:
        """The confined process holding this job's model for this tenant (started if need be)."""
        info = self.model_info(m)
        keys = self.model_keys(m)

        def weights() -> bytes:
            data = self.model_records(m).weights(m.model, m.model_version)
            if data is None or hashlib.sha256(data).hexdigest() != info.get("weights_sha256"):
                raise ValueError(f"model {m.model!r}: the stored weights are not those of version {m.model_version}")
            return data

        s = self.settings

        def load() -> dict:
            return {"device": s.device, "options": {"fold_batchnorm": s.fold_batchnorm,
                                                    "channels_last": s.channels_last, "compile": s.compile},
                    "sizes": self.batch_sizes.of(self.content_key(info)), "measure_s": s.batch_measure_s}

        budget = Budget(seconds=s.model_inspect_timeout_s + s.compute_grace_s, memory_mb=s.compute_memory_mb)
        key = model_key(m.tenant, keys.tenant, m.model, m.model_version)
        return self.compute_pool.get(key, info, weights, load, budget, threads=s.torch_threads or (os.cpu_count() or 1))

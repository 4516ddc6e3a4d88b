"""What a worker process keeps between units: connections, the device, loaded models,
job manifests and an I/O thread pool."""
from __future__ import annotations

import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property

import torch

from shared.backends import Backends
from shared.storage import keys
from worker.models.loading import LoadedModel, ModelCache, pick_device


@dataclass
class WorkerContext(Backends):
    manifests: OrderedDict = field(default_factory=OrderedDict)
    pid: int = field(default_factory=os.getpid)  # a forked child builds its own

    @cached_property
    def device(self) -> torch.device:
        return pick_device(self.settings.device)

    @cached_property
    def models(self) -> ModelCache:
        return ModelCache(self.settings.model_cache_size)

    @cached_property
    def io(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(8, thread_name_prefix="xaiq-io")

    def manifest(self, job: str) -> dict:
        if job not in self.manifests:
            self.manifests[job] = self.storage.get_json(keys.job(job))
            while len(self.manifests) > 32:
                self.manifests.popitem(last=False)
        return self.manifests[job]

    def model(self, name: str) -> LoadedModel:
        return self.models.get(self.storage, name, self.device)

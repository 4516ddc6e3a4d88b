"""The connections every xaiq process holds: object storage and the job store."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from shared.jobs import JobStore
from shared.settings import Settings
from shared.storage import Storage, storage


@dataclass
class Backends:
    settings: Settings

    @property
    def storage(self) -> Storage:
        return storage(self.settings)  # one per process, also after a fork

    @cached_property
    def jobs(self) -> JobStore:
        return JobStore(self.settings)

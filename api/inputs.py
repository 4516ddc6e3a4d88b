"""A job's or an audit's images, stored as they arrive: new bytes go into the job's own tar
shards, images already stored (uploads, a kept archive) are only indexed. Shards are written
by a small pool while the request goes on (at most two in flight, so the API's memory stays
flat), index pages as they fill; a request refused half-way removes what it stored."""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

from api import connections
from api.errors import ApiError
from api.streaming import probe_image
from shared.contracts import Inputs
from shared.shards import InputWriter, Source
from shared.storage import Keys

IN_FLIGHT = 2


class JobInputs:
    """Collects the inputs of job `job` of the caller's tenant. `labels`: a function of the
    image's position that gives its label (or None), checked as images arrive."""

    def __init__(self, job: str, keys: Keys, skip_invalid: bool = False):
        self.job, self.keys, self.skip_invalid = job, keys, skip_invalid
        self.c = connections.get()
        s = self.c.settings
        self.max_pixels, self.max_images = s.max_image_pixels, s.max_images_per_job
        self.pool = ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="xaiq-shards")
        self.futures: list[Future] = []
        self.writer = InputWriter(self._put, lambda k: keys.input_shard(job, k), lambda p: keys.input_index(job, p))
        self.label_of = None
        self.started = time.monotonic()

    def _put(self, key: str, data: bytes) -> None:
        while len(self.futures) >= IN_FLIGHT:
            self.futures.pop(0).result()
        self.futures.append(self.pool.submit(self.c.storage.put, key, data))

    def _count(self) -> None:
        if self.writer.count >= self.max_images:
            raise ApiError(413, f"more than {self.max_images} images; a job takes at most {self.max_images}")

    def add(self, name: str, data: bytes) -> None:
        """An image's bytes (checked from its header: 4xx, or skipped with the reason)."""
        self._count()
        try:
            ext, pixels = probe_image(name, data, self.max_pixels)
        except ApiError as e:
            if not self.skip_invalid:
                raise
            return self.writer.skip(name, e.message)
        label = self.label_of(self.writer.count) if self.label_of else None
        self.writer.add(name[:200], data, ext, label, pixels)

    def refer(self, name: str, where: Source, label: int | None = None, pixels: int = 0) -> None:
        """An image already stored (an upload, an entry of a kept archive)."""
        self._count()
        self.writer.refer(name[:200], where, label, pixels)

    def skip(self, name: str, reason: str) -> None:
        if not self.skip_invalid:
            raise ApiError(422, f"{name[:200]}: {reason}")
        self.writer.skip(name, reason)

    def close(self) -> Inputs:
        inputs = self.writer.close()
        for f in self.futures:
            f.result()
        self.pool.shutdown()
        if inputs.count == 0:
            why = f" ({len(inputs.skipped)} skipped: {inputs.skipped[0].name}: {inputs.skipped[0].reason})" \
                if inputs.skipped else ""
            raise ApiError(400, "no images: attach PNG/JPEG files (multipart) or list 'inputs' paths (JSON)" + why)
        return inputs

    def abort(self) -> None:
        """Remove whatever was stored (best effort: an orphan is never referenced)."""
        for f in self.futures:
            f.cancel()
        self.pool.shutdown(wait=True)
        try:
            self.c.storage.remove_prefix(self.keys.inputs(self.job))
        except Exception:  # noqa: BLE001
            pass

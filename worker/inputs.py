"""A unit's images, read as the broker reads them: the index pages that hold them (cached per
job), the fewest ranged requests that cover their bytes (`shared.shards.plan_reads`: usually
one per unit), then each image decoded in the I/O threads. An image that cannot be read
fails alone, with the reason; the others go on."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from shared.contracts import IndexPage, InputEntry, JobManifest
from shared.shards import entry_bytes, plan_reads
from shared.storage import Keys
from worker import images

if TYPE_CHECKING:
    from worker.context import WorkerContext


@dataclass
class Batch:
    """The decoded images of a unit that could be read."""

    indices: list[int]
    names: list[str]
    sizes: list[tuple[int, int]]
    labels: list[int | None]
    pixels: np.ndarray          # (N, C, H, W) float32 in [0, 1]
    errors: dict[int, str]      # index -> why it could not be read (or explained)
    all_names: dict[int, str]   # every index of the unit -> its name

    def only(self, rows: list[int], errors: dict[int, str]) -> "Batch":
        return replace(self, indices=[self.indices[j] for j in rows], names=[self.names[j] for j in rows],
                       sizes=[self.sizes[j] for j in rows], labels=[self.labels[j] for j in rows],
                       pixels=self.pixels[rows], errors={**self.errors, **errors})


class IndexCache:
    """Index pages of recent jobs (a unit reads one or two)."""

    def __init__(self, size: int = 4):
        self.size, self.pages = size, OrderedDict()

    def get(self, st, keys: Keys, job: str, page: int) -> IndexPage:
        key = (keys.tenant, job, page)
        if key not in self.pages:
            self.pages[key] = IndexPage.model_validate_json(st.get(keys.input_index(job, page)))
            while len(self.pages) > self.size:
                self.pages.popitem(last=False)
        self.pages.move_to_end(key)
        return self.pages[key]


def entries(ctx: "WorkerContext", m: JobManifest, indices: list[int]) -> list[InputEntry]:
    keys, size = Keys(m.tenant), m.inputs.page_size
    out = []
    for i in indices:
        page = ctx.index_pages.get(ctx.storage, keys, m.id, i // size)
        out.append(page.entries[i - page.first])
    return out


def read_images(ctx: "WorkerContext", m: JobManifest, info: dict, indices: list[int]) -> Batch:
    """Images `indices` of a job, decoded to the model's input size."""
    found = entries(ctx, m, indices)
    limit = ctx.settings.max_image_pixels
    max_bytes = ctx.settings.max_image_mb << 20
    reads = plan_reads(found, m.inputs.sources)
    datas = list(ctx.io.map(lambda r: ctx.storage.get_range(r.key, r.start, r.end), reads))

    def decode(job):
        read, data, e = job
        try:
            return images.decode(entry_bytes(read, data, e, max_bytes), info, limit)
        except Exception as err:  # noqa: BLE001 - one bad input fails one item, not the unit
            return f"cannot read input {e.name[:200]!r}: {type(err).__name__}"

    jobs = [(pos, (read, data, e)) for read, data in zip(reads, datas) for pos, e in read.entries]
    decoded = dict(zip((pos for pos, _ in jobs), ctx.io.map(decode, [j for _, j in jobs])))
    ok = [p for p in range(len(found)) if not isinstance(decoded[p], str)]
    return Batch(indices=[indices[p] for p in ok], names=[found[p].name for p in ok],
                 sizes=[decoded[p][1] for p in ok], labels=[found[p].label for p in ok],
                 pixels=np.stack([decoded[p][0] for p in ok]) if ok else np.zeros((0,), np.float32),
                 errors={indices[p]: decoded[p] for p in range(len(found)) if isinstance(decoded[p], str)},
                 all_names={i: e.name for i, e in zip(indices, found)})


def read_batch(ctx: "WorkerContext", m: JobManifest, info: dict, first: int, count: int) -> Batch:
    return read_images(ctx, m, info, list(range(first, first + count)))

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


@dataclass
class Raw:
    """An image's index entry and its bytes (or why they could not be read)."""

    index: int
    entry: InputEntry
    data: bytes | None
    error: str | None = None


def fetch(ctx: "WorkerContext", m: JobManifest, indices: list[int]) -> list[Raw]:
    """The bytes of images `indices`: the fewest ranged requests that cover them, in the I/O
    threads; a deflated entry inflated (never past `max_image_mb`)."""
    found = entries(ctx, m, indices)
    max_bytes = ctx.settings.max_image_mb << 20
    reads = plan_reads(found, m.inputs.sources)
    datas = list(ctx.io.map(lambda r: ctx.storage.get_range(r.key, r.start, r.end), reads))
    out: list[Raw | None] = [None] * len(found)
    for read, data in zip(reads, datas):
        for pos, e in read.entries:
            try:
                out[pos] = Raw(indices[pos], e, entry_bytes(read, data, e, max_bytes))
            except ValueError as err:
                out[pos] = Raw(indices[pos], e, None, f"cannot read input {e.name[:200]!r}: {err}")
    return out


def decode(raws: list[Raw], info: dict, max_pixels: int) -> Batch:
    """The images decoded to the model's input size, one after another (callers run several
    of these side by side)."""
    ok, errors = [], {r.index: r.error for r in raws if r.error}
    for r in raws:
        if r.data is None:
            continue
        try:
            ok.append((r, *images.decode(r.data, info, max_pixels)))
        except Exception as err:  # noqa: BLE001 - one bad input fails one item, not the unit
            errors[r.index] = f"cannot read input {r.entry.name[:200]!r}: {type(err).__name__}"
    return Batch(indices=[r.index for r, _, _ in ok], names=[r.entry.name for r, _, _ in ok],
                 sizes=[size for _, _, size in ok], labels=[r.entry.label for r, _, _ in ok],
                 pixels=np.stack([px for _, px, _ in ok]) if ok else np.zeros((0,), np.float32),
                 errors=errors, all_names={r.index: r.entry.name for r in raws})


def read_images(ctx: "WorkerContext", m: JobManifest, info: dict, indices: list[int]) -> Batch:
    """Images `indices` of a job, decoded to the model's input size (in the I/O threads, in
    parts side by side)."""
    raws = fetch(ctx, m, indices)
    parts = [raws[i:i + 64] for i in range(0, len(raws), 64)]
    batches = list(ctx.io.map(lambda p: decode(p, info, ctx.settings.max_image_pixels), parts))
    return join(batches)


def join(batches: list[Batch]) -> Batch:
    pixels = [b.pixels for b in batches if len(b.indices)]
    return Batch(indices=[i for b in batches for i in b.indices], names=[n for b in batches for n in b.names],
                 sizes=[z for b in batches for z in b.sizes], labels=[x for b in batches for x in b.labels],
                 pixels=np.concatenate(pixels) if pixels else np.zeros((0,), np.float32),
                 errors={k: v for b in batches for k, v in b.errors.items()},
                 all_names={k: v for b in batches for k, v in b.all_names.items()})

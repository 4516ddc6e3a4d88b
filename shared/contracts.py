"""What moves between the API, Redis, the workers and storage, as types: each is written in
one place and read through its type.

- `JobManifest` (`jobs/{job}/job.json`): written by the API at submit (`api.submit`), its
  final state by the job's lifecycle (`shared.lifecycle`); read by workers and the API.
- `IndexPage` (`inputs/{job}/index/{page}.json`): where each input image's bytes lie (a
  shard of the job's own, a kept zip or tar, an upload shard), with its name and class;
  written by the API while the request streams in (`shared.shards.InputWriter`).
- `WorkItem`: what waits in a tenant's list and is leased by a worker (`shared.dispatch`).
- `UnitRecords` (`jobs/{job}/units/{u}/records.json`): what a unit computed, one record per
  image and where each method's maps and pictures lie in the unit's shards; written last by
  the worker (`worker.unit`), so its presence means the unit's shards are complete.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Kind = Literal["job", "audit"]


class Contract(BaseModel):
    model_config = ConfigDict(extra="ignore")

    def dump(self) -> dict:
        return self.model_dump(mode="json", exclude_none=True)


# --- inputs -----------------------------------------------------------------------------------

class InputEntry(Contract):
    """One input image: its bytes at [offset, offset + length) of `sources[source]`."""

    name: str
    source: int
    offset: int
    length: int
    deflated: bool = False       # raw deflate (an entry of a kept zip), else stored as is
    label: int | None = None     # the target class a job names, or an audit's true class (its folder)
    pixels: int = 0              # width x height (from the header): what decoding it costs


class IndexPage(Contract):
    first: int                   # the index of its first entry
    entries: list[InputEntry]


class Skipped(Contract):
    name: str
    reason: str


class Inputs(Contract):
    """A job's images: `count` entries in pages of `page_size`, their bytes in `sources`."""

    count: int
    page_size: int
    sources: list[str]           # object keys (the job's shards, a kept archive, upload shards)
    pixels: int = 0              # decoded pixels of all images
    skipped: list[Skipped] = []  # files left out (`skip_invalid`), with why

    def pages(self, first: int, count: int) -> range:
        """The index pages that hold entries first..first+count-1."""
        return range(first // self.page_size, (first + max(count, 1) - 1) // self.page_size + 1)


# --- jobs -------------------------------------------------------------------------------------

class Progress(Contract):
    total: int
    done: int = 0
    failed: int = 0


class JobManifest(Contract):
    id: str
    kind: Kind = "job"
    tenant: str
    name: str | None = None
    model: str
    model_version: str
    model_scope: Literal["tenant", "shared"] = "tenant"
    methods: dict[str, dict[str, Any]]
    inputs: Inputs
    unit_size: int
    units: int
    pictures: bool = True        # write each image's pictures (false: raw maps only)
    options: dict[str, Any] | None = None   # an audit's options
    created: float
    cost: float = 0.0            # the estimate, GFLOP
    # the final state, written once the job ends
    status: str = "queued"
    progress: Progress | None = None
    started: float | None = None
    finished: float | None = None
    error: str | None = None

    def unit_range(self, unit: int) -> tuple[int, int]:
        """(first image, count) of a unit."""
        first = unit * self.unit_size
        return first, max(0, min(self.unit_size, self.inputs.count - first))


class WorkItem(Contract):
    """A waiting or leased piece of work: a unit of a job or audit, an audit's report, or a
    model's inspection. Its JSON (sorted keys) is also its lease's member."""

    tenant: str
    kind: Literal["job", "audit", "report", "inspect"]
    job: str | None = None
    unit: int | None = None
    first: int | None = None
    count: int | None = None
    model: str | None = None
    version: str | None = None
    shared: bool | None = None


# --- results ----------------------------------------------------------------------------------

class ArrayShard(Contract):
    """All maps of one method for a unit's images: a .npy of shape (rows, *shape), float32;
    row r starts at byte offset + r * row_bytes."""

    key: str
    shape: list[int]
    dtype: str = "<f4"
    offset: int
    rows: int

    @property
    def row_bytes(self) -> int:
        n = 4
        for d in self.shape:
            n *= d
        return n


class Span(Contract):
    """Bytes [offset, offset + length) of an object (a member of a tar shard)."""

    offset: int
    length: int


class ItemRecord(Contract):
    index: int
    name: str
    status: Literal["done", "failed"]
    error: str | None = None
    target: int | None = None
    prediction: dict[str, Any] | None = None
    size: list[int] | None = None
    row: int | None = None                 # its row in the unit's array shards
    pictures: dict[str, Span] = {}         # method -> its picture in the method's picture shard
    fields: dict[str, Any] = {}            # what an audit adds (true class, faithfulness, ...)


class UnitRecords(Contract):
    unit: int
    first: int
    count: int
    attempt: str                           # the run that wrote the shards below
    maps: dict[str, ArrayShard] = {}       # method -> its maps
    pictures: dict[str, str] = {}          # method -> key of its picture shard (a tar)
    extras: dict[str, Span] = {}           # per-unit pictures (figure, filter visualisations) in `extras_key`
    extras_key: str | None = None
    timings: dict[str, float] = {}
    precision: dict[str, str] = {}         # method -> the dtype its passes ran in
    precision_guard: dict[str, str] = {}   # method -> the precision guard's verdict, in words
    worker: str = ""
    items: list[ItemRecord] = Field(default_factory=list)


# --- uploads ----------------------------------------------------------------------------------

class UploadedFile(Contract):
    shard: int                   # which of the batch's `shards`
    offset: int
    length: int
    pixels: int = 0


class UploadIndex(Contract):
    """What one upload request stored in one folder (`upload-index/{folder}/{batch}.json`):
    names -> where their bytes lie in the request's tar shards. A later batch's name wins."""

    batch: str                   # time-ordered: sorting batches sorts them by time
    folder: str
    created: float
    shards: list[str]
    files: dict[str, UploadedFile]

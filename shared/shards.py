"""Bytes in shards: many images (or pictures) in one object, found again by byte ranges.

Layouts (documented in the README, "Storage layout"):
- A *tar shard* is a POSIX tar (USTAR) whose members are named `{index:08d}{ext}`, the way
  WebDataset shards are: any tar tool lists and extracts it; xaiq reads one member by its byte
  range, which the index (inputs) or the unit's records (pictures) hold.
- An *uploaded archive* (a zip or an uncompressed tar) is kept whole: its own directory is
  the index (each entry's data range, stored or raw-deflated), checked before it is kept.
- An *array shard* is one .npy of (rows, *shape) float32: row r at header + r * row bytes.

Nothing here talks to storage: writers hand finished objects to a `put(key, data)`
callback, readers get byte ranges from the caller.
"""
from __future__ import annotations

import io
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Callable, Iterable

import numpy as np

from shared.contracts import IndexPage, InputEntry, Inputs, Skipped, Span

BLOCK = 512
MERGE_GAP = 1 << 20        # ranges closer than this are read in one request
SHARD_BYTES = 8 << 20      # a shard is written once it holds this much: the API holds about three (flat memory)


class ArchiveRefused(ValueError):
    """An uploaded archive that xaiq will not keep (the message says why)."""


# --- tar shards ------------------------------------------------------------------------------

class TarShard:
    """A tar shard in memory: `add(name, data)` returns the member's data span."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.USTAR_FORMAT)
        self.members = 0

    def add(self, name: str, data: bytes) -> Span:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o644
        start = self.buf.tell()
        self.tar.addfile(info, io.BytesIO(data))
        self.members += 1
        return Span(offset=start + BLOCK, length=len(data))   # one header block: names stay short

    @property
    def size(self) -> int:
        return self.buf.tell()

    def getvalue(self) -> bytes:
        self.tar.close()
        return self.buf.getvalue()


# --- inputs: shards and index pages, written while a request streams in ----------------------

@dataclass
class Source:
    """Where an entry's bytes already are (an upload shard, a kept archive)."""

    key: str
    offset: int
    length: int
    deflated: bool = False


class InputWriter:
    """Collects a job's images in order: new bytes go into the job's own tar shards (`add`),
    bytes already stored elsewhere are only indexed (`refer`). Full shards and index pages
    go to `put(key, data)` as soon as they are complete; `close()` writes the rest and
    returns the `Inputs` of the manifest. Memory: one shard and one index page."""

    def __init__(self, put: Callable[[str, bytes], None], shard_key: Callable[[int], str],
                 page_key: Callable[[int], str], shard_bytes: int = SHARD_BYTES, page_size: int = 4096):
        self.put, self.shard_key, self.page_key = put, shard_key, page_key
        self.shard_bytes, self.page_size = shard_bytes, page_size
        self.sources: list[str] = []
        self.source_of: dict[str, int] = {}
        self.page: list[InputEntry] = []
        self.count = self.pixels = self.shards = 0
        self.skipped: list[Skipped] = []
        self.shard: TarShard | None = None
        self.shard_source = -1

    def _source(self, key: str) -> int:
        if key not in self.source_of:
            self.source_of[key] = len(self.sources)
            self.sources.append(key)
        return self.source_of[key]

    def add(self, name: str, data: bytes, ext: str, label: int | None = None, pixels: int = 0) -> None:
        if self.shard is None:
            self.shard = TarShard()
            self.shard_source = self._source(self.shard_key(self.shards))
        span = self.shard.add(f"{self.count:08d}{ext}", data)
        self._entry(InputEntry(name=name, source=self.shard_source, offset=span.offset, length=span.length,
                               label=label, pixels=pixels))
        if self.shard.size >= self.shard_bytes:
            self._flush_shard()

    def refer(self, name: str, where: Source, label: int | None = None, pixels: int = 0) -> None:
        self._entry(InputEntry(name=name, source=self._source(where.key), offset=where.offset, length=where.length,
                               deflated=where.deflated, label=label, pixels=pixels))

    def skip(self, name: str, reason: str) -> None:
        self.skipped.append(Skipped(name=name[:200], reason=reason[:300]))

    def _entry(self, e: InputEntry) -> None:
        self.page.append(e)
        self.count += 1
        self.pixels += e.pixels
        if len(self.page) == self.page_size:
            self._flush_page()

    def _flush_shard(self) -> None:
        if self.shard is not None and self.shard.members:
            self.put(self.shard_key(self.shards), self.shard.getvalue())
            self.shards += 1
        self.shard = None

    def _flush_page(self) -> None:
        if self.page:
            first = self.count - len(self.page)
            self.put(self.page_key(first // self.page_size), IndexPage(first=first, entries=self.page)
                     .model_dump_json(exclude_none=True).encode())
        self.page = []

    def close(self) -> Inputs:
        self._flush_shard()
        self._flush_page()
        return Inputs(count=self.count, page_size=self.page_size, sources=self.sources, pixels=self.pixels,
                      skipped=self.skipped)


# --- reading entries back --------------------------------------------------------------------

@dataclass
class Read:
    """One ranged request: bytes [start, end) of `key`, and the entries inside it."""

    key: str
    start: int
    end: int
    entries: list[tuple[int, InputEntry]]   # (position in the caller's list, entry)


def plan_reads(entries: list[InputEntry], sources: list[str], gap: int = MERGE_GAP) -> list[Read]:
    """The fewest ranged requests that cover `entries`: per source, ranges closer than
    `gap` merged (a unit's images, written together, usually lie in one range)."""
    by_source: dict[int, list[tuple[int, InputEntry]]] = {}
    for pos, e in enumerate(entries):
        by_source.setdefault(e.source, []).append((pos, e))
    reads: list[Read] = []
    for source, group in by_source.items():
        group.sort(key=lambda pe: pe[1].offset)
        cur: Read | None = None
        for pos, e in group:
            if cur is not None and e.offset - cur.end <= gap:
                cur.end = max(cur.end, e.offset + e.length)
                cur.entries.append((pos, e))
            else:
                cur = Read(sources[source], e.offset, e.offset + e.length, [(pos, e)])
                reads.append(cur)
    return reads


def entry_bytes(read: Read, data: bytes, e: InputEntry, max_bytes: int) -> bytes:
    """An entry's own bytes from a read's data, inflated if it is deflated (never more than
    `max_bytes`: a lying archive cannot grow memory)."""
    raw = data[e.offset - read.start:e.offset - read.start + e.length]
    if len(raw) != e.length:
        raise ValueError("the stored object is shorter than its index says")
    if not e.deflated:
        return raw
    d = zlib.decompressobj(-15)
    out = d.decompress(raw, max_bytes + 1)
    if len(out) > max_bytes:
        raise ValueError(f"an entry inflates to more than {max_bytes} bytes")
    return out


# --- uploaded archives, kept whole -----------------------------------------------------------

@dataclass
class ArchiveEntry:
    path: str          # the entry's path inside the archive ('/'-separated)
    offset: int        # its data (stored or raw-deflated bytes)
    length: int        # bytes at offset
    size: int          # bytes once inflated
    deflated: bool
    crc: int | None = None   # a zip entry's CRC-32 of its inflated bytes


def _safe_path(name: str) -> str:
    p = PurePosixPath(name)
    if name.startswith("/") or "\\" in name or "\x00" in name or {"..", "."} & set(p.parts):
        raise ArchiveRefused(f"{name[:200]!r}: paths in the archive must stay inside it (no '..' or '/')")
    return str(p)


def index_zip(f, file_size: int, max_ratio: int, max_entry: int, max_total: int) -> list[ArchiveEntry]:
    """The regular files of a zip (`f` seekable) with their data ranges. Refused: entries
    that overlap each other (a zip bomb's trick), compression other than stored/deflate,
    encryption, an entry over `max_entry` bytes or `max_ratio`:1, more than `max_total`
    bytes inflated in all."""
    try:
        z = zipfile.ZipFile(f)
        infos = [i for i in z.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError):
        raise ArchiveRefused("not a readable zip file") from None
    out, total = [], 0
    for i in infos:
        if i.flag_bits & 0x1:
            raise ArchiveRefused(f"{i.filename[:200]!r} is encrypted")
        if i.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ArchiveRefused(f"{i.filename[:200]!r}: only stored or deflated entries are read")
        if i.file_size > max_entry or i.file_size > max_ratio * max(i.compress_size, 1024):
            raise ArchiveRefused(f"{i.filename[:200]!r} unpacks to {i.file_size} bytes from {i.compress_size}: an "
                                 f"entry may be {max_entry >> 20} MB and compress at most {max_ratio}:1")
        total += i.file_size
        if total > max_total:
            raise ArchiveRefused(f"the archive unpacks to more than {max_total >> 20} MB")
        f.seek(i.header_offset)
        head = f.read(30)
        if len(head) != 30 or head[:4] != b"PK\x03\x04":
            raise ArchiveRefused(f"{i.filename[:200]!r}: a broken local header")
        start = i.header_offset + 30 + int.from_bytes(head[26:28], "little") + int.from_bytes(head[28:30], "little")
        out.append(ArchiveEntry(_safe_path(i.filename), start, i.compress_size, i.file_size,
                                i.compress_type == zipfile.ZIP_DEFLATED, i.CRC))
    _no_overlaps(out, file_size)
    return out


def index_tar(f, file_size: int, max_entry: int, max_total: int) -> list[ArchiveEntry]:
    """The regular files of an uncompressed tar with their data ranges (links, devices and
    other special members are skipped; a compressed tar is refused: it has no byte ranges)."""
    try:
        t = tarfile.open(fileobj=f, mode="r:")
        members = [m for m in t if m.isreg()]
    except (tarfile.TarError, OSError, ValueError, EOFError):
        raise ArchiveRefused("not a readable uncompressed tar (a .tar.gz cannot be read by ranges: unpack it first)") \
            from None
    out, total = [], 0
    for m in members:
        if m.size > max_entry:
            raise ArchiveRefused(f"{m.name[:200]!r} is {m.size} bytes: an entry may be {max_entry >> 20} MB")
        total += m.size
        if total > max_total:
            raise ArchiveRefused(f"the archive holds more than {max_total >> 20} MB")
        out.append(ArchiveEntry(_safe_path(m.name), m.offset_data, m.size, m.size, False))
    _no_overlaps(out, file_size)
    return out


def _no_overlaps(entries: list[ArchiveEntry], file_size: int) -> None:
    spans = sorted((e.offset, e.offset + e.length, e.path) for e in entries)
    for (a0, a1, pa), (b0, _, pb) in zip(spans, spans[1:]):
        if b0 < a1:
            raise ArchiveRefused(f"entries {pa[:100]!r} and {pb[:100]!r} overlap: each entry must have bytes of its own")
    if spans and spans[-1][1] > file_size:
        raise ArchiveRefused(f"{spans[-1][2][:200]!r} reaches past the end of the archive")


# --- array shards ----------------------------------------------------------------------------

def array_shard(rows: np.ndarray) -> tuple[bytes, int]:
    """(the .npy bytes of rows (N, ...) as float32, the header's length)."""
    arr = np.ascontiguousarray(rows, dtype="<f4")
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    data = buf.getvalue()
    return data, len(data) - arr.nbytes


def single_npy(row: bytes, shape: Iterable[int]) -> bytes:
    """One row of an array shard as a .npy file of its own."""
    arr = np.frombuffer(row, dtype="<f4").reshape(tuple(shape))
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()

"""Multipart requests read as they stream in, part by part (werkzeug's sans-IO decoder), so a
request of any size holds one file at a time in memory: jobs of 100,000 images, uploads,
dataset archives (those are spooled to a temporary file instead)."""
from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass, field
from typing import IO, Iterator

from flask import request
from PIL import Image, UnidentifiedImageError
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from api.errors import ApiError

CHUNK = 1 << 16
IMAGE_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg"}   # MPO: the multi-picture JPEG of phone cameras


@dataclass
class Part:
    """A form field or file as it arrives; a file's bytes come from `read()` (held in memory,
    up to a limit) or `spool()` (to a temporary file)."""

    name: str
    filename: str | None
    _chunks: Iterator[bytes]
    _done: list = field(default_factory=lambda: [False])

    def read(self, limit: int) -> bytes:
        """All of it, or 413 past `limit` bytes (the rest of the part is skipped)."""
        buf = bytearray()
        for chunk in self._chunks:
            buf += chunk
            if len(buf) > limit:
                self.drain()
                raise ApiError(413, f"{(self.filename or self.name)[:200]!r} is larger than {limit >> 20} MB")
        self._done[0] = True
        return bytes(buf)

    def spool(self, limit: int) -> IO[bytes]:
        """All of it in a temporary file (rewound), or 413 past `limit` bytes."""
        f = tempfile.TemporaryFile()
        n = 0
        for chunk in self._chunks:
            n += len(chunk)
            if n > limit:
                f.close()
                self.drain()
                raise ApiError(413, f"{(self.filename or self.name)[:200]!r} is larger than {limit >> 30} GB")
            f.write(chunk)
        self._done[0] = True
        f.seek(0)
        return f

    def drain(self) -> None:
        for _ in self._chunks:
            pass
        self._done[0] = True


def _events(stream: IO[bytes], boundary: bytes, max_parts: int) -> Iterator:
    decoder = MultipartDecoder(boundary, max_parts=max_parts)
    while True:
        event = decoder.next_event()
        if isinstance(event, NeedData):
            try:
                chunk = stream.read(CHUNK)
            except RequestEntityTooLarge:
                limit = request.max_content_length or 0
                raise ApiError(413, f"the request is larger than {limit / 2**30:g} GB") from None
            decoder.receive_data(chunk or None)
            if not chunk and not decoder.buffer:
                return
            continue
        if isinstance(event, Epilogue):
            return
        yield event


def parts(max_parts: int) -> Iterator[Part]:
    """The parts of this multipart request, in order; each must be read (or drained) before
    the next. 400 for a request that is not multipart, 413 past `max_parts` parts."""
    if request.mimetype != "multipart/form-data":
        raise ApiError(400, "send multipart/form-data")
    boundary = parse_options_header(request.headers.get("Content-Type", ""))[1].get("boundary")
    if not boundary:
        raise ApiError(400, "a multipart request needs a boundary in its Content-Type")
    events = _events(request.stream, boundary.encode("latin-1"), max_parts)
    try:
        yield from _parts(events)
    except RequestEntityTooLarge:
        raise ApiError(413, f"more than {max_parts} parts in one request") from None
    except ValueError as e:
        raise ApiError(400, f"a malformed multipart body: {str(e)[:100]}") from None


def _parts(events) -> Iterator[Part]:
    pending = None
    while True:
        event = pending or next(events, None)
        pending = None
        if event is None:
            return
        if not isinstance(event, (Field, File)):
            continue
        holder: list = []

        def chunks():
            for ev in events:
                if isinstance(ev, Data):
                    if ev.data:
                        yield ev.data
                    if not ev.more_data:
                        return
                else:
                    holder.append(ev)
                    return

        part = Part(event.name or "", event.filename if isinstance(event, File) else None, chunks())   # a header without a readable name
        yield part
        if not part._done[0]:
            part.drain()
        if holder:
            pending = holder[0]


def probe_image(name: str, data: bytes, max_pixels: int) -> tuple[str, int]:
    """(the file's extension by its content, width x height) from its header alone, and a PNG's
    chunks checked (decoding is the workers' work, counted in the job's cost); 415, 413 or 400
    for a bad image."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            ext = IMAGE_FORMATS.get(img.format)
            if ext is None:
                raise ApiError(415, f"{name[:200]}: {img.format} images are not accepted; send PNG or JPEG")
            w, h = img.size
            if img.format == "PNG":
                img.verify()   # every chunk there and its CRC right (no pixels decoded): a cut PNG is a 400
    except Image.DecompressionBombError:
        raise ApiError(413, f"{name[:200]}: too many pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise ApiError(400, f"{name[:200]}: not a readable PNG or JPEG image ({type(e).__name__})") from None
    if w * h > max_pixels:
        raise ApiError(413, f"{name[:200]}: {w}x{h} is larger than the limit of {max_pixels} pixels")
    return ext, w * h

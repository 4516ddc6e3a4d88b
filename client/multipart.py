"""A multipart/form-data body as a generator: the form fields first (the spec, the folder),
then the files one at a time, read in chunks. `requests` sends a generator with chunked
transfer encoding, so a request of any size streams in constant memory."""
from __future__ import annotations

import secrets
from pathlib import Path

CHUNK = 1 << 20
TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".zip": "application/zip"}


def _quoted(name: str) -> str:
    """A name inside a quoted header parameter, as browsers send it."""
    return name.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def source_size(source: Path | bytes) -> int:
    return len(source) if isinstance(source, (bytes, bytearray)) else Path(source).stat().st_size


class Body:
    """`fields`: {name: text}, sent first; `files`: [(field, file name, path or bytes)].
    `len(body)` is its size in bytes (for a progress bar); iterate it to send it."""

    def __init__(self, fields: dict[str, str], files: list[tuple[str, str, Path | bytes]], bar=None):
        self.boundary = secrets.token_hex(16)
        self.content_type = f"multipart/form-data; boundary={self.boundary}"
        self.fields, self.files, self.bar = fields, files, bar
        self.sizes = [source_size(src) for _, _, src in files]

    def _head(self, field: str, filename: str | None = None) -> bytes:
        disposition = f'form-data; name="{_quoted(field)}"'
        if filename is None:
            return f"--{self.boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        ctype = TYPES.get(Path(filename).suffix.lower(), "application/octet-stream")
        return (f'--{self.boundary}\r\nContent-Disposition: {disposition}; filename="{_quoted(filename)}"\r\n'
                f"Content-Type: {ctype}\r\n\r\n").encode()

    def __len__(self) -> int:
        fields = sum(len(self._head(k)) + len(v.encode()) + 2 for k, v in self.fields.items())
        files = sum(len(self._head(f, n)) + size + 2 for (f, n, _), size in zip(self.files, self.sizes))
        return fields + files + len(self.boundary) + 6

    def _sent(self, chunk: bytes) -> bytes:
        if self.bar is not None:
            self.bar.update(len(chunk))
        return chunk

    def __iter__(self):
        for key, value in self.fields.items():
            yield self._sent(self._head(key) + value.encode() + b"\r\n")
        for field, filename, source in self.files:
            yield self._sent(self._head(field, filename))
            if isinstance(source, (bytes, bytearray)):
                for start in range(0, len(source), CHUNK):
                    yield self._sent(bytes(source[start:start + CHUNK]))
            else:
                with open(source, "rb") as f:        # one file open at a time
                    while chunk := f.read(CHUNK):
                        yield self._sent(chunk)
            yield self._sent(b"\r\n")
        yield self._sent(f"--{self.boundary}--\r\n".encode())


def progress_bar(total: int, desc: str, enabled: bool | None):
    """A bar of bytes sent on stderr; `enabled` None: only when stderr is a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False,
                disable=None if enabled is None else not enabled)

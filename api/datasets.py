"""Datasets laid out one folder per class: read from an uploaded zip (entry by entry, with
size and ratio limits checked while reading) or from a folder of the tenant's uploads."""
from __future__ import annotations

import zipfile
import zlib
from pathlib import PurePosixPath
from typing import IO

from api.errors import ApiError
from shared.storage import Keys, Storage

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_RATIO = 100          # uncompressed / compressed size of one entry: images hardly compress
MAX_ENTRY_BYTES = 64 << 20


def class_index(folder: str, classes: list[str]) -> int:
    if folder in classes:
        return classes.index(folder)
    raise ApiError(422, f"folder {folder!r} names no class of the model; its classes: {', '.join(classes[:50])}")


def _class_paths(infos: list[zipfile.ZipInfo]) -> list[tuple[str, ...]]:
    """(class, name) of each entry; a zip of the dataset's own folder loses its one top folder."""
    for i in infos:
        if i.filename.startswith("/") or "\\" in i.filename or {"..", "."} & set(i.filename.split("/")):
            raise ApiError(422, f"{i.filename[:200]!r}: paths in the zip must stay inside it (no '..' or '/')")
    parts = [PurePosixPath(i.filename).parts for i in infos]
    while all(len(p) > 2 for p in parts) and len({p[0] for p in parts}) == 1:
        parts = [p[1:] for p in parts]
    if any(len(p) != 2 for p in parts):
        bad = next("/".join(p) for p in parts if len(p) != 2)
        raise ApiError(422, f"{bad[:200]!r}: the zip must hold one folder per class with images directly inside")
    return parts


def zip_entries(fileobj: IO[bytes], max_bytes: int) -> tuple[list[tuple[str, str, zipfile.ZipInfo]], zipfile.ZipFile]:
    """(class folder, name, entry) of every image of a one-folder-per-class zip, and the
    open zip to read them from with `read_entry`; nothing is unpacked here. The sizes the
    zip declares are checked now, and again while each entry is read."""
    try:
        z = zipfile.ZipFile(fileobj)
        infos = [i for i in z.infolist() if not i.is_dir() and i.filename.lower().endswith(IMAGE_SUFFIXES)
                 and not PurePosixPath(i.filename).name.startswith(".") and "__MACOSX" not in i.filename]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError):
        raise ApiError(400, "'dataset' is not a readable zip file") from None
    if not infos:
        raise ApiError(422, "the zip holds no PNG/JPEG images in class folders")
    if sum(i.file_size for i in infos) > max_bytes:
        raise ApiError(413, f"the zip unpacks to more than {max_bytes // 2**20} MB")
    for i in infos:
        if i.file_size > MAX_ENTRY_BYTES or i.file_size > MAX_RATIO * max(i.compress_size, 1024):
            raise ApiError(413, f"{i.filename[:200]!r} unpacks to {i.file_size} bytes from {i.compress_size}: "
                                f"an image may be {MAX_ENTRY_BYTES >> 20} MB and compress at most {MAX_RATIO}:1")
    return [(p[0], p[1], i) for p, i in zip(_class_paths(infos), infos)], z


def read_entry(z: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """One entry's bytes, never more than it declared (a lying header cannot grow memory)."""
    try:
        with z.open(info) as f:
            data = f.read(info.file_size + 1)
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError, zlib.error, EOFError) as e:
        raise ApiError(400, f"cannot read the zip: {type(e).__name__}") from None
    if len(data) != info.file_size:
        raise ApiError(400, f"{info.filename[:200]!r}: the zip's declared size is wrong")
    return data


def upload_entries(st: Storage, keys: Keys, folder: str) -> list[tuple[str, str, str]]:
    """(class folder, name, key) of the images under a folder of the tenant's uploads laid
    out {folder}/{class}/{file}."""
    prefix = keys.uploads(folder)
    out = []
    for key in st.list(prefix):
        rest = PurePosixPath(key[len(prefix):]).parts
        if len(rest) == 2 and key.lower().endswith(IMAGE_SUFFIXES):
            out.append((rest[0], rest[1], key))
    if not out:
        raise ApiError(422, f"no images in your uploads under {folder!r} in the layout {folder}/<class>/<image>")
    return out

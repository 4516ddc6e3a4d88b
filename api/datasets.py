"""Datasets laid out one folder per class: read from an uploaded zip or a bucket prefix."""
from __future__ import annotations

import io
import zipfile
import zlib
from pathlib import PurePosixPath

from api.errors import ApiError
from shared.storage import Storage

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def class_index(folder: str, classes: list[str]) -> int:
    if folder in classes:
        return classes.index(folder)
    raise ApiError(422, f"folder {folder!r} names no class of the model; its classes: {', '.join(classes[:50])}")


def _class_paths(infos: list[zipfile.ZipInfo]) -> list[tuple[str, ...]]:
    """(class, name) of each entry; a zip of the dataset's own folder loses its one top folder."""
    parts = [PurePosixPath(i.filename).parts for i in infos]
    while all(len(p) > 2 for p in parts) and len({p[0] for p in parts}) == 1:
        parts = [p[1:] for p in parts]
    if any(len(p) != 2 for p in parts):
        bad = next("/".join(p) for p in parts if len(p) != 2)
        raise ApiError(422, f"{bad!r}: the zip must hold one folder per class with images directly inside")
    return parts


def zip_entries(data: bytes, max_bytes: int) -> tuple[list[tuple[str, str, zipfile.ZipInfo]], zipfile.ZipFile]:
    """(class folder, name, entry) of every image of a one-folder-per-class zip, and the
    open zip to read them from (`read_entry`): nothing is unpacked yet."""
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ApiError(400, "'dataset' is not a zip file") from None
    infos = [i for i in z.infolist() if not i.is_dir() and i.filename.lower().endswith(IMAGE_SUFFIXES)
             and not PurePosixPath(i.filename).name.startswith(".") and "__MACOSX" not in i.filename]
    if not infos:
        raise ApiError(422, "the zip holds no PNG/JPEG images in class folders")
    if sum(i.file_size for i in infos) > max_bytes:
        raise ApiError(413, f"the zip unpacks to more than {max_bytes // 2**20} MB")
    return [(p[0], p[1], i) for p, i in zip(_class_paths(infos), infos)], z


def read_entry(z: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    try:
        return z.read(info)
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError, zlib.error) as e:
        raise ApiError(400, f"cannot read the zip: {type(e).__name__}: {e}") from None


def prefix_entries(st: Storage, prefix: str) -> list[tuple[str, str, str]]:
    """(class folder, name, key) of the images under a bucket prefix laid out {prefix}/{class}/{file}."""
    prefix = prefix.strip("/") + "/"
    out = []
    for key in st.list(prefix):
        rest = PurePosixPath(key[len(prefix):]).parts
        if len(rest) == 2 and key.lower().endswith(IMAGE_SUFFIXES):
            out.append((rest[0], rest[1], key))
    if not out:
        raise ApiError(422, f"no images under {prefix!r} in the layout {prefix}<class>/<image>")
    return out

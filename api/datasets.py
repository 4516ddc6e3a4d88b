"""Where a job's or an audit's images come from besides the request itself: the tenant's
uploads (a folder's index objects, the newest batch winning for a name) and an uploaded
archive (a zip or an uncompressed tar, kept whole: its directory is the index). Datasets
for audits are laid out one folder per class."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath
from typing import IO

from api import connections
from api.errors import ApiError
from shared.contracts import UploadIndex
from shared.shards import ArchiveEntry, ArchiveRefused, Source, index_tar, index_zip
from shared.storage import Keys, Storage

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_RATIO = 100          # uncompressed / compressed size of one entry: images hardly compress


def class_index(folder: str, classes: list[str]) -> int:
    if folder in classes:
        return classes.index(folder)
    raise ApiError(422, f"folder {folder!r} names no class of the model; its classes: {', '.join(classes[:50])}")


def is_image_name(path: str) -> bool:
    name = PurePosixPath(path).name
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".") and "__MACOSX" not in path


# --- uploads ---------------------------------------------------------------------------------

def folder_files(st: Storage, keys: Keys, folder: str, recursive: bool) -> dict[str, tuple[Source, int]]:
    """path (below the uploads) -> (where its bytes lie, pixels) of the files in `folder`
    (and its sub-folders if `recursive`); for a name stored twice, the newest upload's."""
    prefix = keys.upload_indexes(folder)
    index_keys = [k for k in st.list(prefix, recursive=recursive) if k.endswith(".json")]
    with ThreadPoolExecutor(8) as pool:
        indexes = list(pool.map(lambda k: UploadIndex.model_validate_json(st.get(k)), index_keys))
    files: dict[str, tuple[Source, int]] = {}
    for ix in sorted(indexes, key=lambda x: x.batch):
        for name, f in ix.files.items():
            path = f"{ix.folder}/{name}" if ix.folder else name
            files[path] = (Source(ix.shards[f.shard], f.offset, f.length), f.pixels)
    return files


def upload_sources(paths: list[str], keys: Keys) -> list[tuple[Source, int]]:
    """Where each of these upload paths lies; 422 listing the ones not in the uploads."""
    st = connections.get().storage
    folders: dict[str, dict] = {}
    found, missing = [], []
    for p in paths:
        folder = p.rpartition("/")[0]
        if folder not in folders:
            folders[folder] = folder_files(st, keys, folder, recursive=False)
        hit = folders[folder].get(p)
        (found.append(hit) if hit else missing.append(p))
    if missing:
        raise ApiError(422, f"inputs: {len(missing)} path(s) not in your uploads (POST /v1/uploads)", missing[:20])
    return found


def class_tree(st: Storage, keys: Keys, folder: str) -> list[tuple[str, str, Source, int]]:
    """(class folder, name, where, pixels) of the images laid out {folder}/{class}/{file}."""
    out = []
    for path, (where, pixels) in sorted(folder_files(st, keys, folder, recursive=True).items()):
        rest = PurePosixPath(path[len(folder.strip('/')) + 1:] if folder.strip("/") else path).parts
        if len(rest) == 2 and is_image_name(path):
            out.append((rest[0], rest[1], where, pixels))
    if not out:
        raise ApiError(422, f"no images in your uploads under {folder!r} in the layout {folder}/<class>/<image>")
    return out


# --- archives --------------------------------------------------------------------------------

def archive_entries(f: IO[bytes], size: int, filename: str) -> tuple[str, list[ArchiveEntry]]:
    """('zip' or 'tar', the archive's image entries) of an uploaded dataset, refused (4xx) if
    it cannot be read by byte ranges or breaks a limit."""
    s = connections.get().settings
    max_entry, max_total = s.max_image_mb << 20, int(s.max_dataset_gb * 2**30) * 4
    f.seek(0)
    head = f.read(4)
    f.seek(0)
    kind = "zip" if head[:2] == b"PK" or filename.lower().endswith(".zip") else "tar"
    try:
        if kind == "zip":
            found = index_zip(f, size, MAX_RATIO, max_entry, max_total)
        else:
            found = index_tar(f, size, max_entry, max_total)
    except ArchiveRefused as e:
        code = 413 if "unpacks to" in str(e) or "holds more" in str(e) or " MB" in str(e) else 422
        raise ApiError(400 if "not a readable" in str(e) else code, f"{filename[:100]}: {e}") from None
    entries = [e for e in found if is_image_name(e.path)]
    if not entries:
        raise ApiError(422, f"{filename[:100]}: the archive holds no PNG/JPEG images in class folders")
    return kind, entries


def class_paths(paths: list[str]) -> list[tuple[str, str]]:
    """(class, name) of each path; an archive of the dataset's own folder loses its one top folder."""
    parts = [PurePosixPath(p).parts for p in paths]
    while all(len(p) > 2 for p in parts) and len({p[0] for p in parts}) == 1:
        parts = [p[1:] for p in parts]
    bad = next(("/".join(p) for p in parts if len(p) != 2), None)
    if bad is not None:
        raise ApiError(422, f"{bad[:200]!r}: the archive must hold one folder per class with images directly inside")
    return [(p[0], p[1]) for p in parts]

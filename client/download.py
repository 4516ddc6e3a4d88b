"""A job's results on disk, the same from the CLI and the SDK:

    DIR/<job>/results.json                      what the job was and where each file is
    DIR/<job>/<index>-<name>/<method>.png|.npy  per image (its original name, made safe)
    DIR/<job>/units/<unit>/<picture>.png        per work unit (composite figures, filter pictures)

and a job's maps as arrays, read from the per-image `.npy` files."""
from __future__ import annotations

import io
import json
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe(name: str, limit: int = 80) -> str:
    """A file-system-safe form of a name (no separators, no leading dot)."""
    out = UNSAFE.sub("_", name).lstrip(".")[:limit]
    return out or "_"


def item_folder(index: int, name: str, width: int) -> str:
    stem = Path(name.replace("\\", "/").rsplit("/", 1)[-1]).stem
    return f"{index:0{width}d}-{safe(stem)}"


def when(t: float | None) -> str | None:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds") if t else None


def npy_info(path: Path) -> dict:
    arr = np.load(path, mmap_mode="r")
    return {"shape": list(arr.shape), "dtype": str(arr.dtype)}


def _image_entry(item: dict, folder: str, tasks: list) -> dict:
    files = {}
    for method, urls in (item.get("methods") or {}).items():
        for kind in ("png", "npy"):
            if urls.get(kind):
                rel = f"{folder}/{safe(method)}.{kind}"
                tasks.append((urls[kind], rel))
                files.setdefault(method, {})[kind] = rel
    return {"index": item["index"], "name": item["name"], "status": item["status"],
            "prediction": item.get("prediction"), "target": item.get("target"), "error": item.get("error"),
            "files": files}


def _fetch_all(client, tasks: list[tuple[str, str]], folder: Path, threads: int = 8) -> None:
    """Write each URL's body to folder/rel (kept when it is there already: a download resumes)."""
    def one(task):
        url, rel = task
        path = folder / rel
        if path.exists() and path.stat().st_size > 0:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        client.fetch_to(url, path)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, tasks))


def _describe_job(state: dict) -> dict:
    return {"job": state["id"], "kind": state.get("kind", "job"), "name": state.get("name"),
            "status": state["status"], "model": {"name": state.get("model"), "version": state.get("model_version")},
            "methods": state.get("methods", {}), "progress": state.get("progress"),
            "created": when(state.get("created")), "started": when(state.get("started")),
            "finished": when(state.get("finished")), "error": state.get("error")}


def download(client, job: str, out: str | Path) -> Path:
    """Every image's pictures and raw maps, the per-unit pictures and results.json, into
    out/<job>/; returns that folder."""
    folder = Path(out) / job
    folder.mkdir(parents=True, exist_ok=True)
    state = client.status(job)
    images, units = [], {}
    for body in client.pages(job):
        width = max(5, len(str(max(body["total"] - 1, 0))))
        tasks: list[tuple[str, str]] = []
        page = [_image_entry(item, item_folder(item["index"], item["name"], width), tasks) for item in body["items"]]
        for name, url in (body.get("extras") or {}).items():
            rel = "units/" + "/".join(safe(part) for part in name.split("/"))
            tasks.append((url, rel))
            units[name] = rel
        _fetch_all(client, tasks, folder)     # page by page: signed URLs are fresh
        for entry in page:
            for files in entry["files"].values():
                if "npy" in files:
                    files.update(npy_info(folder / files["npy"]))
        images += page
    record = {**_describe_job(state), "images": images, "units": units}
    (folder / "results.json").write_text(json.dumps(record, indent=1))
    return folder


def load_maps(client, job: str, threads: int = 8) -> dict[str, np.ndarray]:
    """{method: the maps of the job's images stacked in index order}; an image without a
    map (failed, cancelled, pending) is a row of NaN. A method with no map at all: (n,) NaN."""
    methods = list(client.status(job).get("methods", {}))
    maps: dict[str, dict[int, np.ndarray]] = {m: {} for m in methods}
    total = 0
    for body in client.pages(job):
        total = body["total"]
        wanted = [(m, item["index"], urls["npy"]) for item in body["items"] if item["status"] == "done"
                  for m, urls in (item.get("methods") or {}).items() if urls.get("npy")]
        with ThreadPoolExecutor(threads) as pool:
            arrays = pool.map(lambda w: np.load(io.BytesIO(client.fetch_bytes(w[2]))), wanted)
            for (m, i, _), arr in zip(wanted, arrays):
                maps.setdefault(m, {})[i] = arr
    out = {}
    for m, rows in maps.items():
        if not rows:
            out[m] = np.full((total,), np.nan, np.float32)
            continue
        first = next(iter(rows.values()))
        stacked = np.full((total, *first.shape), np.nan, np.result_type(first.dtype, np.float32))
        for i, arr in rows.items():
            stacked[i] = arr
        out[m] = stacked
    return out

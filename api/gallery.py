"""What the pages show of a job's images: the ground truth and correctness beside each
prediction, filtered pages of items, and an audit's examples per class. Items come from
`records.item_of`, so their picture URLs are exactly the ones the results API gives."""
from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from pydantic import BaseModel, Field

from api import clients, records
from shared.storage import Keys

PER_PAGE = 24
SCAN = 480   # images one filtered page reads at most (their item.json), so a page stays fast


class GalleryQuery(BaseModel):
    page: int = Field(default=1, ge=1, le=100_000)
    status: Literal["", "done", "failed", "pending", "cancelled"] = Field(default="", description="only these")
    predicted: str = Field(default="", max_length=200, description="only images predicted as this class")
    truth: str = Field(default="", max_length=200, description="only images whose label (audit: folder) is this")
    correct: Literal["", "correct", "wrong"] = Field(default="", description="only right (or wrong) predictions")
    q: str = Field(default="", max_length=200, description="only names that contain this (any case)")
    start: int = Field(default=0, ge=0, le=10_000_000, description="filtered pages: first image index to look at")

    @property
    def filtered(self) -> bool:
        return bool(self.status or self.predicted or self.truth or self.correct or self.q)


def classes_of(manifest: dict) -> list[str]:
    """Class names of the model version the job is bound to (its current version if that is gone)."""
    st = clients.get().storage
    k = Keys(None) if manifest.get("model_scope") == "shared" else records.keys()
    info = st.get_json_or_none(k.version(manifest["model"], manifest["model_version"])) \
        if manifest.get("model_version") else None
    return list((info or st.get_json_or_none(k.model(manifest["model"])) or {}).get("classes") or [])


def truth_of(manifest: dict) -> list[int] | None:
    """Each image's true class: an audit's folder, a job's given labels; None if unknown."""
    return manifest.get("truth") or manifest.get("labels")


def judged(item: dict, truth: list[int] | None, classes: list[str]) -> dict:
    """The item with `truth` ({label, class}) and `correct` (None when either is unknown)."""
    t = truth[item["index"]] if truth else None
    item["truth"] = {"label": t, "class": classes[t] if t is not None and t < len(classes) else str(t)} \
        if t is not None else None
    pred = item.get("prediction")
    item["correct"] = None if t is None or not pred else pred["label"] == t
    return item


def read_items(job: str, manifest: dict, status: str, indices, truth, classes) -> list[dict]:
    st, k = clients.get().storage, records.keys()
    with ThreadPoolExecutor(8) as pool:
        return [judged(it, truth, classes) for it in
                pool.map(lambda i: records.item_of(st, k, job, i, manifest, status), indices)]


def matches(item: dict, f: GalleryQuery) -> bool:
    pred = (item.get("prediction") or {}).get("class")
    return ((not f.status or item["status"] == f.status) and (not f.predicted or pred == f.predicted)
            and (not f.correct or item["correct"] is (f.correct == "correct")))


def candidates(manifest: dict, f: GalleryQuery, truth, classes) -> list[int]:
    """Indices from `f.start` that the manifest alone does not rule out (name, truth)."""
    q, want = f.q.lower(), f.truth
    if want and (not truth or want not in classes):
        return []
    out = []
    for i in range(f.start, len(manifest["inputs"])):
        if (not q or q in manifest["inputs"][i]["name"].lower()) and (not want or (truth[i] < len(classes) and classes[truth[i]] == want)):
            out.append(i)
    return out


def filtered_page(job: str, manifest: dict, status: str, f: GalleryQuery, truth, classes) -> tuple[list[dict], dict]:
    """Up to PER_PAGE matching items from `f.start` on, reading at most SCAN items; and where
    the scan stopped: {"from", "to" (last index looked at), "next" (where to go on, or None)}."""
    todo = candidates(manifest, f, truth, classes)
    found: list[dict] = []
    looked = 0
    while looked < len(todo) and len(found) < PER_PAGE and looked < SCAN:
        chunk = todo[looked:looked + 48]
        for item in read_items(job, manifest, status, chunk, truth, classes):
            looked += 1
            if matches(item, f):
                found.append(item)
                if len(found) == PER_PAGE:
                    break
    scan = {"from": f.start, "to": todo[looked - 1] if looked else None,
            "next": todo[looked] if looked < len(todo) else None}
    return found, scan


def examples(job: str, manifest: dict, status: str, classes: list[str], per_class: int = 4, look: int = 8,
             max_classes: int = 30) -> list[dict]:
    """An audit's first images of each class (wrong predictions first among the first `look`)."""
    truth = manifest.get("truth") or []
    first: dict[int, list[int]] = {}
    for i, t in enumerate(truth):
        if t not in first and len(first) < max_classes:
            first[t] = []
        if t in first and len(first[t]) < look:
            first[t].append(i)
    wanted = sorted(i for idx in first.values() for i in idx)
    items = {it["index"]: it for it in read_items(job, manifest, status, wanted, truth, classes)}
    out, counts = [], Counter(truth)
    for t in sorted(first):
        its = sorted((items[i] for i in first[t]), key=lambda it: (it["correct"] is not False, it["index"]))
        out.append({"label": t, "class": classes[t] if t < len(classes) else str(t), "count": counts[t],
                    "items": its[:per_class]})
    return out

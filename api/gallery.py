"""What the pages show of a job's images: the ground truth and correctness beside each
prediction, filtered pages of items, and an audit's examples per class. Items come from
`records.items_at`, so their picture URLs are exactly the ones the results API gives."""
from __future__ import annotations

from collections import Counter
from typing import Literal

from pydantic import BaseModel, Field

from api import connections, records
from shared.contracts import InputEntry, JobManifest
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


def classes_of(m: JobManifest) -> list[str]:
    """Class names of the model version the job is bound to (its current version if that is gone)."""
    st = connections.get().storage
    k = Keys(None) if m.model_scope == "shared" else Keys(m.tenant)
    info = st.get_json_or_none(k.version(m.model, m.model_version)) or st.get_json_or_none(k.model(m.model))
    return list((info or {}).get("classes") or [])


def entries(m: JobManifest, start: int, stop: int) -> dict[int, InputEntry]:
    """The index entries (name, label) of images start..stop-1."""
    out: dict[int, InputEntry] = {}
    stop = min(stop, m.inputs.count)
    for page in (m.inputs.pages(start, stop - start) if stop > start else []):
        p = records.index_page(m, page)
        out.update({p.first + k: e for k, e in enumerate(p.entries) if start <= p.first + k < stop})
    return out


def judged(item: dict, truth: int | None, classes: list[str]) -> dict:
    """The item with `truth` ({label, class}) and `correct` (None when either is unknown)."""
    item["truth"] = {"label": truth, "class": classes[truth] if truth < len(classes) else str(truth)} \
        if truth is not None else None
    pred = item.get("prediction")
    item["correct"] = None if truth is None or not pred else pred["label"] == truth
    return item


def read_items(m: JobManifest, status: str, indices: list[int], known: dict[int, InputEntry],
               classes: list[str]) -> list[dict]:
    return [judged(it, known[it["index"]].label if it["index"] in known else None, classes)
            for it in records.items_at(m, status, indices)]


def page(m: JobManifest, status: str, number: int, classes: list[str]) -> tuple[list[dict], bool]:
    """One unfiltered page of judged items, and whether more follow."""
    start = (number - 1) * PER_PAGE
    indices = list(range(min(start, m.inputs.count), min(start + PER_PAGE, m.inputs.count)))
    known = entries(m, indices[0], indices[-1] + 1) if indices else {}
    return read_items(m, status, indices, known, classes), start + PER_PAGE < m.inputs.count


def matches(item: dict, f: GalleryQuery) -> bool:
    pred = (item.get("prediction") or {}).get("class")
    return ((not f.status or item["status"] == f.status) and (not f.predicted or pred == f.predicted)
            and (not f.correct or item["correct"] is (f.correct == "correct")))


def candidates(known: dict[int, InputEntry], f: GalleryQuery, classes: list[str]) -> list[int]:
    """Indices that the index alone does not rule out (name, truth)."""
    q, want = f.q.lower(), f.truth
    if want and want not in classes:
        return []
    return [i for i, e in sorted(known.items())
            if (not q or q in e.name.lower()) and (not want or (e.label is not None and e.label < len(classes)
                                                                and classes[e.label] == want))]


def filtered_page(m: JobManifest, status: str, f: GalleryQuery, classes: list[str]) -> tuple[list[dict], dict]:
    """Up to PER_PAGE matching items from `f.start` on, looking at most at SCAN images' index
    entries past the name and truth filters; and where the scan stopped: {"from", "to" (last
    index looked at), "next" (where to go on, or None)}."""
    known = entries(m, f.start, f.start + 8 * SCAN)
    todo = candidates(known, f, classes)
    found: list[dict] = []
    looked = 0
    while looked < len(todo) and len(found) < PER_PAGE and looked < SCAN:
        chunk = todo[looked:looked + 48]
        for item in read_items(m, status, chunk, known, classes):
            looked += 1
            if matches(item, f):
                found.append(item)
                if len(found) == PER_PAGE:
                    break
    last = max(known) if known else f.start
    nxt = todo[looked] if looked < len(todo) else (last + 1 if last + 1 < m.inputs.count else None)
    return found, {"from": f.start, "to": todo[looked - 1] if looked else None, "next": nxt}


def examples(m: JobManifest, status: str, classes: list[str], per_class: int = 4, look: int = 8,
             max_classes: int = 30) -> list[dict]:
    """An audit's first images of each class (wrong predictions first among the first `look`),
    from its first 16,384 images."""
    known = entries(m, 0, 16384)
    first: dict[int, list[int]] = {}
    counts: Counter = Counter()
    for i, e in sorted(known.items()):
        t = e.label
        counts[t] += 1
        if t is not None and t not in first and len(first) < max_classes:
            first[t] = []
        if t in first and len(first[t]) < look:
            first[t].append(i)
    wanted = sorted(i for idx in first.values() for i in idx)
    items = {it["index"]: it for it in read_items(m, status, wanted, known, classes)}
    out = []
    for t in sorted(first):
        its = sorted((items[i] for i in first[t]), key=lambda it: (it["correct"] is not False, it["index"]))
        out.append({"label": t, "class": classes[t] if t < len(classes) else str(t), "count": counts[t],
                    "items": its[:per_class]})
    return out

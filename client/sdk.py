"""Python SDK of the xaiq HTTP API.

    from client.sdk import Client
    c = Client("http://127.0.0.1:8000", api_key="...")
    job = c.submit(["a.png", "b.png"], model="digits-cnn", methods={"saliency": {}})
    c.wait(job)
    for item in c.results(job): print(item["prediction"], item["methods"]["saliency"]["png"])
"""
from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Iterable, Iterator

import requests

FINAL = ("succeeded", "failed", "cancelled")


class ApiError(RuntimeError):
    def __init__(self, status: int, message: str, details=None):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message, self.details = status, message, details


class Client:
    """`patience`: how long reads (GET) ride out a restarting API or a storage outage (503),
    retrying with backoff; submissions are never repeated behind your back."""

    def __init__(self, server: str | None = None, api_key: str | None = None, timeout: float = 300,
                 patience: float = 120):
        self.server = (server or os.environ.get("XAIQ_SERVER") or "http://127.0.0.1:8000").rstrip("/")
        self.session = requests.Session()
        key = api_key if api_key is not None else os.environ.get("XAIQ_API_KEY", "")
        if key:
            self.session.headers["Authorization"] = f"Bearer {key}"
        self.timeout, self.patience = timeout, patience

    def _request(self, method: str, path: str, **kw) -> requests.Response:
        deadline, delay = time.monotonic() + (self.patience if method == "GET" else 0), 0.25
        while True:
            try:
                r = self.session.request(method, f"{self.server}{path}", timeout=self.timeout, **kw)
                if r.status_code != 503 or time.monotonic() + delay > deadline:
                    return r
            except requests.ConnectionError:
                if time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _call(self, method: str, path: str, **kw):
        r = self._request(method, path, **kw)
        if r.status_code >= 400:
            try:
                err = r.json()["error"]
                raise ApiError(r.status_code, err["message"], err.get("details"))
            except (ValueError, KeyError):
                raise ApiError(r.status_code, r.text[:500]) from None
        return r.json()

    # --- models
    def register_model(self, spec: dict, weights: str | Path | bytes, replace: bool = False, shared: bool = False,
                       wait: bool = True, timeout: float = 300) -> dict:
        """Upload a model; with `wait`, poll until a worker has checked it (`ready` or
        `invalid`, with the reason in `error`)."""
        data = weights if isinstance(weights, bytes) else Path(weights).read_bytes()
        query = "&".join(q for q, on in (("replace=1", replace), ("shared=1", shared)) if on)
        info = self._call("POST", "/v1/models" + (f"?{query}" if query else ""),
                          files={"weights": ("weights", data)}, data={"spec": json.dumps(spec)})
        deadline = time.monotonic() + timeout
        while wait and info["status"] == "registering":
            if time.monotonic() > deadline:
                raise TimeoutError(f"model {info['name']} still registering after {timeout} s (is a worker running?)")
            time.sleep(0.3)
            info = self.model(info["name"])
        return info

    def models(self) -> list[dict]:
        return self._call("GET", "/v1/models")["models"]

    def model(self, name: str) -> dict:
        return self._call("GET", f"/v1/models/{name}")

    # --- jobs
    def submit(self, images: Iterable[str | Path | tuple[str, bytes]], model: str,
               methods: dict | None = None, labels: list | None = None, **spec) -> str:
        """Upload images (paths or (name, bytes)) and start a job; returns its id."""
        files = []
        for img in images:
            name, data = (img if isinstance(img, tuple) else (Path(img).name, Path(img).read_bytes()))
            files.append(("images", (name, io.BytesIO(data), "image/png")))
        body = {"model": model, "methods": methods or {"saliency": {}}, **spec}
        if labels is not None:
            body["labels"] = labels
        return self._call("POST", "/v1/jobs", files=files, data={"spec": json.dumps(body)})["id"]

    def submit_uploaded(self, paths: list[str], model: str, methods: dict | None = None, **spec) -> str:
        """A job of images already stored with `upload` (their paths)."""
        body = {"model": model, "methods": methods or {"saliency": {}}, "inputs": paths, **spec}
        return self._call("POST", "/v1/jobs", json=body)["id"]

    # --- uploads
    def upload(self, images: Iterable[str | Path | tuple[str, bytes]], folder: str = "") -> list[str]:
        """Store images under `folder` of your uploads; returns their paths (for `inputs`)."""
        files = []
        for img in images:
            name, data = (img if isinstance(img, tuple) else (Path(img).name, Path(img).read_bytes()))
            files.append(("images", (name, io.BytesIO(data), "image/png")))
        return self._call("POST", "/v1/uploads", files=files, data={"folder": folder})["stored"]

    def uploads(self, folder: str = "") -> list[str]:
        return self._call("GET", "/v1/uploads", params={"folder": folder})["paths"]

    # --- keys and limits (the admin key)
    def create_key(self, tenant: str, name: str = "") -> dict:
        return self._call("POST", "/v1/keys", json={"tenant": tenant, "name": name})

    def keys(self) -> list[dict]:
        return self._call("GET", "/v1/keys")["keys"]

    def revoke_key(self, key_id: str) -> dict:
        return self._call("DELETE", f"/v1/keys/{key_id}")

    def tenant(self, tenant: str) -> dict:
        return self._call("GET", f"/v1/tenants/{tenant}")

    def set_limits(self, tenant: str, **limits) -> dict:
        return self._call("PUT", f"/v1/tenants/{tenant}/limits", json=limits)

    def usage(self) -> dict:
        return self._call("GET", "/v1/usage")

    def status(self, job: str) -> dict:
        return self._call("GET", f"/v1/jobs/{job}")

    def cancel(self, job: str) -> dict:
        return self._call("DELETE", f"/v1/jobs/{job}")

    def wait(self, job: str, progress: bool = False, poll: float = 0.5, timeout: float | None = None,
             path: str = "/v1/jobs") -> dict:
        """Poll until the job ends; with `progress`, a progress bar on stderr."""
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(unit="img", desc=job[:8])
        start, last = time.monotonic(), None
        try:
            while True:
                st = self._call("GET", f"{path}/{job}")
                if bar is not None:
                    p = st["progress"]
                    shown = (p["done"] + p["failed"], st["status"])
                    if shown != last:
                        bar.total = p["total"]
                        bar.n = shown[0]
                        bar.set_postfix(status=st["status"], failed=p["failed"])
                        last = shown
                if st["status"] in FINAL:
                    return st
                if timeout is not None and time.monotonic() - start > timeout:
                    raise TimeoutError(f"job {job} still {st['status']} after {timeout} s")
                time.sleep(poll)
        finally:
            if bar is not None:
                bar.close()

    def pages(self, job: str, per_page: int = 200) -> Iterator[dict]:
        """Each page of GET /v1/jobs/{id}/results (page 1 also holds the per-unit `extras`)."""
        page = 1
        while True:
            body = self._call("GET", f"/v1/jobs/{job}/results?page={page}&per_page={per_page}")
            yield body
            if not body["next"]:
                return
            page += 1

    def results(self, job: str, per_page: int = 200) -> Iterator[dict]:
        for body in self.pages(job, per_page):
            yield from body["items"]

    def download(self, job: str, folder: str | Path) -> Path:
        """Every item's pictures and raw maps, the per-unit pictures (composite figures,
        filter visualisations) and results.json, into folder/."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        pages = list(self.pages(job))
        items = [item for body in pages for item in body["items"]]
        files = {f"{item['index']:05d}-{method}.{kind}": url for item in items
                 for method, urls in item.get("methods", {}).items() for kind, url in urls.items()}
        files.update({f"unit-{name.replace('/', '-')}": url for name, url in pages[0]["extras"].items()})
        for name, url in files.items():
            r = requests.get(url, timeout=self.timeout)
            r.raise_for_status()
            (folder / name).write_bytes(r.content)
        (folder / "results.json").write_text(json.dumps(items, indent=1))
        return folder

    # --- audits
    def audit(self, dataset: str | Path, model: str, methods: dict | None = None, **spec) -> str:
        """Audit a local folder (one sub-folder per class; zipped and uploaded), a .zip, or a
        folder of your uploads (laid out {folder}/{class}/{image})."""
        body = {"model": model, "methods": methods or {"saliency": {}}, **spec}
        path = Path(dataset)
        if path.is_dir() or path.suffix == ".zip":
            data = path.read_bytes() if path.suffix == ".zip" else zip_folder(path)
            return self._call("POST", "/v1/audits", files={"dataset": ("dataset.zip", data, "application/zip")},
                              data={"spec": json.dumps(body)})["id"]
        return self._call("POST", "/v1/audits", json={**body, "dataset": str(dataset)})["id"]

    def audit_status(self, audit: str) -> dict:
        return self._call("GET", f"/v1/audits/{audit}")

    def report(self, audit: str) -> dict:
        return self._call("GET", f"/v1/audits/{audit}/report")

    def download_report(self, audit: str, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        rep = self.report(audit)
        (folder / "report.json").write_text(json.dumps(rep["report"], indent=1))
        r = requests.get(rep["html"], timeout=self.timeout)
        r.raise_for_status()
        (folder / "report.html").write_bytes(r.content)
        return folder / "report.html"


def zip_folder(folder: Path) -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file() and f.suffix.lower() in (".png", ".jpg", ".jpeg"):
                z.write(f, f.relative_to(folder).as_posix())
    return buf.getvalue()

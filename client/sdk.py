"""Python SDK of the xaiq HTTP API.

    from client.sdk import Client
    c = Client("http://127.0.0.1:8000", api_key="...")
    job = c.submit(["a.png", "b.png"], model="digits-cnn", methods={"saliency": {}})
    c.wait(job)
    c.download(job, "results/")          # results/<job>/results.json, pictures, raw maps
    maps = c.load_maps(job)              # {"saliency": array (2, C, H, W)}
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from client import download as downloads
from client.inputs import check_unique
from client.multipart import Body, progress_bar, source_size

FINAL = ("succeeded", "failed", "cancelled")
JOB_ID = re.compile(r"^[0-9a-f]{32}$")


class ApiError(RuntimeError):
    def __init__(self, status: int, message: str, details=None):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message, self.details = status, message, details


class Unreachable(ConnectionError):
    """The server does not answer."""


class JobNotFound(LookupError):
    """No job of yours starts with the given prefix."""


class AmbiguousJob(LookupError):
    """Several of your jobs start with the given prefix (`candidates`)."""

    def __init__(self, prefix: str, candidates: list[dict]):
        rows = [f"  {j['id']}  {j.get('kind', 'job'):5} {j['status']:9} {j.get('name') or ''}" for j in candidates]
        super().__init__("\n".join([f"{len(candidates)} jobs start with {prefix!r}; give more of the id:", *rows]))
        self.candidates = candidates


def named(images: Iterable) -> list[tuple[str, bytes | Path]]:
    """(name, bytes or path) of each image: a path is named by its file name."""
    out = []
    for img in images:
        name, source = img if isinstance(img, tuple) else (Path(img).name, Path(img))
        out.append((name, Path(source) if isinstance(source, str) else source))
    return out


def batches(files: list, max_files: int, max_bytes: int) -> Iterator[list]:
    """Consecutive groups of at most `max_files` files and (unless one file is larger) `max_bytes`."""
    group, size = [], 0
    for item in files:
        n = source_size(item[1])
        if group and (len(group) >= max_files or size + n > max_bytes):
            yield group
            group, size = [], 0
        group.append(item)
        size += n
    if group:
        yield group


class Client:
    """`patience`: how long reads (GET) ride out a restarting API or a storage outage (503),
    retrying with backoff, once the server has answered; submissions are never repeated
    behind your back. A server that never answered is reported at once (`Unreachable`)."""

    def __init__(self, server: str | None = None, api_key: str | None = None, timeout: float = 300,
                 patience: float = 120):
        self.server = (server or os.environ.get("XAIQ_SERVER") or "http://127.0.0.1:8000").rstrip("/")
        key = api_key if api_key is not None else os.environ.get("XAIQ_API_KEY", "")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.session = requests.Session()
        self.session.headers.update(self.headers)
        self.timeout, self.patience = timeout, patience
        self._reached = False
        self._local = threading.local()

    def _sessions(self) -> tuple[requests.Session, requests.Session]:
        """This thread's sessions: one with the key (for the API), one without (elsewhere)."""
        if threading.current_thread() is threading.main_thread():
            if not hasattr(self, "_plain"):
                self._plain = requests.Session()
            return self.session, self._plain
        if not hasattr(self._local, "api"):
            self._local.api, self._local.plain = requests.Session(), requests.Session()
            self._local.api.headers.update(self.headers)
        return self._local.api, self._local.plain

    def _request(self, method: str, url: str, session: requests.Session | None = None, **kw) -> requests.Response:
        url = url if url.startswith(("http://", "https://")) else f"{self.server}{url}"
        deadline, delay = time.monotonic() + (self.patience if method == "GET" else 0), 0.25
        while True:
            try:
                r = (session or self.session).request(method, url, timeout=self.timeout, **kw)
                self._reached = True
                if r.status_code != 503 or time.monotonic() + delay > deadline:
                    return r
            except requests.ConnectionError as e:
                if not self._reached or time.monotonic() + delay > deadline:
                    raise self._unreachable(e, url) from e
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _unreachable(self, e: requests.ConnectionError, url: str) -> Unreachable:
        parts = urlsplit(url)
        where = f"{parts.scheme}://{parts.netloc}"
        if any(isinstance(a, urllib3.exceptions.ProtocolError) for a in e.args):   # connected, then cut off
            return Unreachable(f"the connection to {where} broke while the request was sent or answered "
                               f"({e.args[0].args[0] if e.args[0].args else e}); a request the server refuses "
                               "early (too large?) ends like this")
        own = urlsplit(self.server)
        if where != f"{own.scheme}://{own.netloc}":
            return Unreachable(f"cannot reach {where} (a results URL the server gave)")
        return Unreachable(f"cannot reach {self.server}: is `xaiq up` running? "
                           "(the server comes from --server or $XAIQ_SERVER)")

    @staticmethod
    def _check(r: requests.Response) -> requests.Response:
        if r.status_code >= 400:
            try:
                err = r.json()["error"]
                message, details = err["message"], err.get("details")
            except (ValueError, KeyError, TypeError):
                message, details = r.text[:500] or r.reason, None
            raise ApiError(r.status_code, message, details)
        return r

    def _call(self, method: str, path: str, **kw):
        return self._check(self._request(method, path, **kw)).json()

    def _send(self, path: str, fields: dict, files: list, bar=None, query: dict | None = None):
        """POST a multipart body streamed from disk (fields first, then the files)."""
        body = Body(fields, files, bar)
        return self._call("POST", path, data=iter(body), params=query,
                          headers={"Content-Type": body.content_type})

    # --- files behind URLs (results): the API's with the key, others (S3, signed) plainly
    def _session_for(self, url: str) -> requests.Session:
        api, plain = self._sessions()
        target, own = urlsplit(url), urlsplit(self.server)
        return api if (target.scheme, target.netloc) == (own.scheme, own.netloc) else plain

    def fetch(self, url: str) -> requests.Response:
        full = urljoin(self.server + "/", url)
        return self._check(self._request("GET", full, session=self._session_for(full), stream=True))

    def fetch_bytes(self, url: str) -> bytes:
        return self.fetch(url).content

    def fetch_to(self, url: str, path: Path) -> None:
        """Stream the URL's body into `path` (written whole or not at all)."""
        part = path.with_name(path.name + ".part")
        with self.fetch(url) as r, open(part, "wb") as f:
            f.writelines(r.iter_content(1 << 20))
        os.replace(part, path)

    # --- models
    def register_model(self, spec: dict, weights: str | Path | bytes, replace: bool = False, shared: bool = False,
                       wait: bool = True, timeout: float = 300, progress: bool | None = False) -> dict:
        """Upload a model; with `wait`, poll until a worker has checked it (`ready` or
        `invalid`, with the reason in `error`)."""
        source = weights if isinstance(weights, bytes) else Path(weights)
        query = {k: "1" for k, on in (("replace", replace), ("shared", shared)) if on}
        with progress_bar(source_size(source), "model", progress) as bar:
            info = self._send("/v1/models", {"spec": json.dumps(spec)}, [("weights", "weights", source)], bar, query)
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
    def create_job(self, images: Iterable, model: str, methods: dict | None = None, labels: list | None = None,
                   progress: bool | None = False, **spec) -> dict:
        """Upload images (paths, or (name, bytes or path)) and start a job; returns the API's
        answer: `id`, `status`, `links`, `cost` (and `skipped` when the API skipped files).
        The body streams from disk, the spec first; two images of one name are refused."""
        files = named(images)
        check_unique(files)
        body = {"model": model, "methods": methods or {"saliency": {}}, **spec}
        if labels is not None:
            body["labels"] = labels
        total = sum(source_size(src) for _, src in files)
        with progress_bar(total, "upload", progress) as bar:
            return self._send("/v1/jobs", {"spec": json.dumps(body)}, [("images", n, s) for n, s in files], bar)

    def submit(self, images: Iterable, model: str, methods: dict | None = None, labels: list | None = None,
               progress: bool | None = False, **spec) -> str:
        """Upload images and start a job (see `create_job`); returns its id."""
        return self.create_job(images, model, methods, labels, progress, **spec)["id"]

    def submit_uploaded(self, paths: list[str], model: str, methods: dict | None = None, **spec) -> str:
        """A job of images already stored with `upload` (their paths)."""
        body = {"model": model, "methods": methods or {"saliency": {}}, "inputs": paths, **spec}
        return self._call("POST", "/v1/jobs", json=body)["id"]

    def jobs(self, limit: int = 50, offset: int = 0) -> list[dict]:
        """Your jobs and audits, newest first."""
        return self._call("GET", "/v1/jobs", params={"limit": limit, "offset": offset})["jobs"]

    def resolve(self, prefix: str) -> str:
        """The id of your job (or audit) that starts with `prefix` (among your 500 newest)."""
        p = prefix.strip().lower()
        if JOB_ID.match(p):
            return p
        if not re.fullmatch(r"[0-9a-f]{1,31}", p):
            raise JobNotFound(f"{prefix!r} is not a job id or the start of one (ids are 32 hex digits)")
        recent = self.jobs(limit=500)
        found = [j for j in recent if j["id"].startswith(p)]
        if not found:
            raise JobNotFound(f"no job of yours starts with {prefix!r} (among your {len(recent)} newest)")
        if len(found) > 1:
            raise AmbiguousJob(prefix, found)
        return found[0]["id"]

    # --- uploads
    def upload(self, images: Iterable, folder: str = "", progress: bool | None = False,
               max_files: int = 500, max_bytes: int = 64 * 2**20) -> list[str]:
        """Store images under `folder` of your uploads; returns their paths (for `inputs`).
        A name may hold sub-folders (`cat/a.png`); many files go in several requests."""
        files = named(images)
        check_unique(files, "one upload stores one file per path")
        stored: list[str] = []
        with progress_bar(sum(source_size(s) for _, s in files), "upload", progress) as bar:
            for group in batches(files, max_files, max_bytes):
                answer = self._send("/v1/uploads", {"folder": folder}, [("images", n, s) for n, s in group], bar)
                stored += answer["stored"]
        return stored

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

    def wait(self, job: str, progress: bool | None = False, poll: float = 0.5, timeout: float | None = None,
             path: str = "/v1/jobs") -> dict:
        """Poll until the job ends; with `progress`, a progress bar on stderr."""
        bar = None
        if progress or progress is None:
            from tqdm import tqdm

            bar = tqdm(unit="img", desc=job[:8], disable=None if progress is None else False)
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
        """The job's results into folder/<job>/: per image `<index>-<name>/<method>.png|.npy`,
        per unit `units/<unit>/<picture>.png`, and `results.json` (the job, its model and
        methods, and per image its prediction and the files written). Returns folder/<job>."""
        return downloads.download(self, job, folder)

    def load_maps(self, job: str) -> dict:
        """{method: numpy array of the job's maps stacked in index order}; images without a
        map (failed, cancelled, pending) are rows of NaN."""
        return downloads.load_maps(self, job)

    # --- audits
    def audit(self, dataset: str | Path, model: str, methods: dict | None = None, progress: bool | None = False,
              **spec) -> str:
        """Audit a local folder (one sub-folder per class; zipped into a temporary file and
        streamed), a .zip, or a folder of your uploads (laid out {folder}/{class}/{image}).
        `options` (faithfulness_steps, sanity_sample, shortcuts and shortcut_* (candidates, images,
        controls, fill, alpha, min_effect, min_removal, min_transfer), seed, precision) go in `spec`."""
        body = {"model": model, "methods": methods or {"saliency": {}}, **spec}
        path = Path(dataset)
        if not (path.is_dir() or path.suffix == ".zip"):
            return self._call("POST", "/v1/audits", json={**body, "dataset": str(dataset)})["id"]
        with tempfile.TemporaryDirectory(prefix="xaiq-audit-") as tmp:
            data = path if path.suffix == ".zip" else zip_folder(path, Path(tmp) / "dataset.zip")
            with progress_bar(source_size(data), "upload", progress) as bar:
                return self._send("/v1/audits", {"spec": json.dumps(body)}, [("dataset", "dataset.zip", data)],
                                  bar)["id"]

    def audit_status(self, audit: str) -> dict:
        return self._call("GET", f"/v1/audits/{audit}")

    def report(self, audit: str) -> dict:
        return self._call("GET", f"/v1/audits/{audit}/report")

    def download_report(self, audit: str, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        rep = self.report(audit)
        (folder / "report.json").write_text(json.dumps(rep["report"], indent=1))
        self.fetch_to(rep["html"], folder / "report.html")
        return folder / "report.html"


def zip_folder(folder: Path, dest: Path) -> Path:
    """The folder's images (not hidden ones) in a zip file at `dest`, paths kept."""
    import zipfile

    from client.inputs import scan

    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as z:
        for name, path in scan([str(folder)], mirror=True).files:
            z.write(path, name)
    return dest

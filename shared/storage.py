"""Object storage (MinIO or any S3) through the minio SDK, and the key layout.

Every object key is spelled here, in `Keys`, and nowhere else (one bucket). Each tenant's
objects lie under `tenants/{tenant}/`; the shared, read-only models under `models/`. Bytes
move in shards (`shared.shards`): the number of objects grows with requests and units,
not with images.
  models/{name}/model.json                    a model's record: its current version and versions
  models/{name}/{version}/model.json|weights  one version (content hash of weights and spec)
  upload-shards/{batch}/{k}.tar               images stored with one POST /v1/uploads
  upload-index/{folder}/{batch}.json          which of them lie in {folder}, and where
  inputs/{job}/shards/{k}.tar | dataset.zip   a job's own images, or an uploaded dataset kept whole
  inputs/{job}/index/{page}.json              where each input image's bytes lie (4096 per page)
  jobs/{job}/job.json                         the job manifest (spec, inputs, final status)
  jobs/{job}/units/{u}/records.json           per image of the unit: prediction, timings, where its results lie
  jobs/{job}/units/{u}/{run}/maps-{m}.npy     all maps of a method for the unit's images
  jobs/{job}/units/{u}/{run}/pictures-{m}.tar all pictures of a method (PNG members)
  jobs/{job}/units/{u}/{run}/extras.tar       the unit's figure and per-unit pictures
  audits/{job}/partials/{u}.npz, audits/{job}/report.json|html
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlparse

import urllib3
import urllib3.connection
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError

from shared.settings import Settings

MISSING = ("NoSuchKey", "NoSuchObject", "NoSuchBucket")  # S3 error codes of an absent object
BUSY = ("InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout")  # S3 error codes worth a retry
API_RETRY_S = 2.0   # the API's retry budget, in units of `api_wait_s`; workers wait `storage_retry_s`
BULK_BYTES = 1 << 20  # writes this large wait `storage_timeout_s` per attempt, in the API too


class StorageUnavailable(Exception):
    """Storage did not answer within the retry budget, or the API's health probe says it is down."""


_OPEN: weakref.WeakSet = weakref.WeakSet()   # this process's API storage connections (see release_waiting)


class _Connection(urllib3.connection.HTTPConnection):
    def connect(self):
        super().connect()
        _OPEN.add(self)


class _SecureConnection(urllib3.connection.HTTPSConnection):
    def connect(self):
        super().connect()
        _OPEN.add(self)


class _Pool(urllib3.HTTPConnectionPool):
    ConnectionCls = _Connection


class _SecurePool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _SecureConnection


def release_waiting() -> None:
    """Shut (not close: their threads do that) the sockets of this process's API storage
    connections, so that requests waiting on a hung server fail now rather than at their timeout."""
    for conn in list(_OPEN):
        if conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)


def _client(endpoint: str, s: Settings, patient: bool, bulk: bool = False) -> Minio:
    """Workers wait `storage_timeout_s` per request and let urllib3 retry once; the API waits
    `api_wait_s` (for a bulk write, the server's answer after megabytes: `storage_timeout_s`),
    leaves every retry to `Storage._call`, which keeps to its budget, and its connections can
    be released (`release_waiting`)."""
    url = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
    if patient:
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(2.0, s.storage_timeout_s), read=s.storage_timeout_s), maxsize=16,
            retries=urllib3.Retry(total=1, backoff_factor=0.1, status_forcelist=[500, 502, 503, 504]))
    else:
        wait = max(s.api_wait_s, s.storage_timeout_s) if bulk else s.api_wait_s
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=s.api_wait_s, read=wait), maxsize=16,
                                   retries=urllib3.Retry(total=0, redirect=False))
        http.pool_classes_by_scheme = {"http": _Pool, "https": _SecurePool}
    return Minio(
        endpoint=url.netloc,
        access_key=s.s3_access_key,
        secret_key=s.s3_secret_key,
        secure=url.scheme == "https",
        region=s.s3_region,
        http_client=http,
    )


def _transient(e: Exception) -> bool:
    if isinstance(e, S3Error):
        return e.code in BUSY
    return isinstance(e, (urllib3.exceptions.HTTPError, ServerError, InvalidResponseError, OSError))


class Storage:
    """One per process (the minio client is not fork-safe): use `storage(settings, patient)`.
    Every call retries transient failures with backoff for `retry_s`, never starting an
    attempt that could end past it, then raises StorageUnavailable; so does any call while
    `down()` names an outage (the API's health probe)."""

    def __init__(self, s: Settings, patient: bool = False, down: Callable[[], str] | None = None):
        self.bucket = s.bucket
        self.retry_s = s.storage_retry_s if patient else API_RETRY_S * s.api_wait_s
        self.attempt_s = s.storage_timeout_s if patient else s.api_wait_s   # one attempt's longest wait
        self.down = down or (lambda: "")
        self.client = _client(s.s3_endpoint, s, patient)
        self.bulk = self.client if patient else _client(s.s3_endpoint, s, patient, bulk=True)
        self.bulk_attempt_s = max(self.attempt_s, s.storage_timeout_s)
        self.requests = 0            # requests sent by this process (/metrics, the benchmark)
        self._counting = threading.Lock()

    def _call(self, fn, *args, **kw):
        return self._retrying(lambda: fn(*args, **kw), self.retry_s, self.attempt_s)

    def _call_bulk(self, fn):
        """A large write: each attempt may wait `bulk_attempt_s` for the server's answer, and
        the budget holds at least one retry of that length."""
        return self._retrying(fn, max(self.retry_s, 2 * self.bulk_attempt_s), self.bulk_attempt_s)

    def _retrying(self, fn, retry_s: float, attempt_s: float):
        deadline, delay = time.monotonic() + retry_s, 0.25
        while True:
            with self._counting:
                self.requests += 1
            why = self.down()
            if why:
                raise StorageUnavailable(why)
            try:
                return fn()
            except Exception as e:  # noqa: BLE001 - sorted by _transient
                if not _transient(e):
                    raise
                why = self.down()
                if why or time.monotonic() + delay + attempt_s > deadline:
                    raise StorageUnavailable(why or f"storage did not answer: {type(e).__name__}") from e
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def ensure_bucket(self) -> None:
        try:
            if not self._call(self.client.bucket_exists, bucket_name=self.bucket):
                self._call(self.client.make_bucket, bucket_name=self.bucket)
        except S3Error as e:  # another process created it between the two calls
            if e.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        bulk = len(data) >= BULK_BYTES

        def put():
            (self.bulk if bulk else self.client).put_object(
                bucket_name=self.bucket, object_name=key, data=io.BytesIO(data), length=len(data),
                content_type=content_type)
        return self._call_bulk(put) if bulk else self._call(put)

    def put_json(self, key: str, obj) -> None:
        self.put(key, json.dumps(obj, indent=1, allow_nan=False).encode(), "application/json")

    def put_stream(self, key: str, f, size: int, content_type: str = "application/octet-stream") -> None:
        """A seekable file of `size` bytes, in parts when it is large (a retry starts over)."""
        def put():
            f.seek(0)
            self.bulk.put_object(bucket_name=self.bucket, object_name=key, data=f, length=size,
                                 content_type=content_type, part_size=64 << 20)
        self._call_bulk(put)

    def _get(self, key: str, start: int = 0, length: int = 0) -> bytes:
        resp = self.client.get_object(bucket_name=self.bucket, object_name=key, offset=start, length=length)
        try:
            data = resp.read()
        finally:
            resp.close()
            resp.release_conn()
        if length and len(data) != length:
            raise ValueError(f"{key}: {len(data)} bytes where {length} were asked for")
        return data

    def get(self, key: str) -> bytes:
        return self._call(self._get, key)

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of an object, in one request."""
        return self._call(self._get, key, start, end - start) if end > start else b""

    def get_json(self, key: str):
        return json.loads(self.get(key))

    def get_json_or_none(self, key: str):
        try:
            return self.get_json(key)
        except S3Error as e:
            if e.code in MISSING:
                return None
            raise

    def remove(self, key: str) -> None:
        self._call(self.client.remove_object, bucket_name=self.bucket, object_name=key)

    def remove_prefix(self, prefix: str) -> int:
        """Every object under `prefix`, in batch deletes of up to 1000; how many."""
        keys = self.list(prefix)
        for i in range(0, len(keys), 1000):
            chunk = [DeleteObject(k) for k in keys[i:i + 1000]]
            errors = self._call(lambda c=chunk: list(self.client.remove_objects(bucket_name=self.bucket,
                                                                              delete_object_list=c)))
            if errors:
                raise StorageUnavailable(f"{len(errors)} object(s) under {prefix} were not removed")
        return len(keys)

    def exists(self, key: str) -> bool:
        try:
            self._call(self.client.stat_object, bucket_name=self.bucket, object_name=key)
            return True
        except S3Error as e:
            if e.code in MISSING:
                return False
            raise

    def list(self, prefix: str, recursive: bool = True, limit: int | None = None) -> list[str]:
        def listing():
            out = []
            for o in self.client.list_objects(bucket_name=self.bucket, prefix=prefix, recursive=recursive):
                out.append(o.object_name)
                if limit is not None and len(out) >= limit:
                    break
            return out
        return self._call(listing)

    def ping(self) -> None:
        self.client.bucket_exists(bucket_name=self.bucket)


_per_process: dict[tuple[int, bool, str], Storage] = {}


def storage(s: Settings, patient: bool = False) -> Storage:
    """The process's Storage for these settings (a fresh one after fork); `patient` for workers."""
    key = (os.getpid(), patient, s.model_dump_json())
    if key not in _per_process:
        _per_process[key] = Storage(s, patient)
    return _per_process[key]


@dataclass(frozen=True)
class Keys:
    """The object keys of one owner: a tenant (under `tenants/{tenant}/`), or None for the
    shared, read-only models."""

    tenant: str | None = None

    @property
    def root(self) -> str:
        return f"tenants/{self.tenant}/" if self.tenant else ""

    def owns(self, key: str) -> bool:
        return bool(self.tenant) and key.startswith(self.root)

    # --- models: the current manifest, and each version's manifest and weights
    def models(self) -> str:
        return f"{self.root}models/"

    def model(self, name: str) -> str:
        return f"{self.root}models/{name}/model.json"

    def model_name(self, key: str) -> str | None:
        """The model a listed key under `models()` is the manifest of, else None."""
        rest = key[len(self.models()):].split("/") if key.startswith(self.models()) else []
        return rest[0] if len(rest) == 2 and rest[1] == "model.json" else None

    def model_files(self, name: str) -> str:
        """The prefix of every object of one model (its record, versions and weights)."""
        return f"{self.root}models/{name}/"

    def version(self, name: str, version: str) -> str:
        return f"{self.root}models/{name}/{version}/model.json"

    def weights(self, name: str, version: str) -> str:
        return f"{self.root}models/{name}/{version}/weights"

    # --- uploads: tar shards per upload request, and per folder an index per request
    def upload_shard(self, batch: str, k: int) -> str:
        return f"{self.root}upload-shards/{batch}/{k:05d}.tar"

    def upload_index(self, folder: str, batch: str) -> str:
        """The names a request stored in `folder` ('' for the top) and where their bytes lie."""
        return f"{self.upload_indexes(folder)}{batch}.json"

    def upload_indexes(self, folder: str = "") -> str:
        f = folder.strip("/")
        return f"{self.root}upload-index/{f + '/' if f else ''}"

    def upload_folder(self, index_key: str) -> str | None:
        """The folder an upload index key belongs to ('' for the top), else None."""
        top = self.upload_indexes()
        if not index_key.startswith(top) or not index_key.endswith(".json"):
            return None
        return index_key[len(top):].rpartition("/")[0]

    # --- a job's inputs: its own tar shards or a kept archive, and the index pages
    def inputs(self, job: str) -> str:
        return f"{self.root}inputs/{job}/"

    def input_shard(self, job: str, k: int) -> str:
        return f"{self.root}inputs/{job}/shards/{k:05d}.tar"

    def input_index(self, job: str, page: int) -> str:
        return f"{self.root}inputs/{job}/index/{page:05d}.json"

    def input_archive(self, job: str, ext: str) -> str:
        """An uploaded dataset kept whole: `zip` or `tar`."""
        return f"{self.root}inputs/{job}/dataset.{ext}"

    # --- jobs and audits: the manifest, and per unit its records and its shards
    def jobs(self, job: str) -> str:
        return f"{self.root}jobs/{job}/"

    def job(self, job: str) -> str:
        return f"{self.root}jobs/{job}/job.json"

    def records(self, job: str, unit: int) -> str:
        """What a unit computed (written last: its presence means the unit's shards are there)."""
        return f"{self.root}jobs/{job}/units/{unit:06d}/records.json"

    def unit_shard(self, job: str, unit: int, attempt: str, name: str) -> str:
        """A shard of one run of a unit: `maps-{method}.npy`, `pictures-{method}.tar`, `extras.tar`."""
        return f"{self.root}jobs/{job}/units/{unit:06d}/{attempt}/{name}"

    def unit_runs(self, job: str, unit: int) -> str:
        return f"{self.root}jobs/{job}/units/{unit:06d}/"

    @staticmethod
    def maps_name(method: str) -> str:
        return f"maps-{method}.npy"

    @staticmethod
    def pictures_name(method: str) -> str:
        return f"pictures-{method}.tar"

    EXTRAS = "extras.tar"
    FIGURE = "figure.png"            # a unit's composite figure, a member of its extras shard

    @staticmethod
    def extra_name(method: str, extra: str, k: int) -> str:
        """A per-unit picture of a method (a filter's visualisation) in the extras shard."""
        return f"{method}-{extra}-{k}.png"

    @staticmethod
    def item_file(method: str, ext: str) -> str:
        """The name a single item's file has for a user: `{method}.png` or `{method}.npy`."""
        return f"{method}.{ext}"

    def audit_partial(self, job: str, unit: int) -> str:
        return f"{self.root}audits/{job}/partials/{unit:06d}.npz"

    def audit_partials(self, job: str) -> str:
        return f"{self.root}audits/{job}/partials/"

    def audits(self, job: str) -> str:
        return f"{self.root}audits/{job}/"

    def report(self, job: str, ext: str) -> str:
        """`json` or `html`."""
        return f"{self.root}audits/{job}/report.{ext}"

"""Object storage (MinIO or any S3) through the minio SDK, and the key layout.

Every object key is spelled here, in `Keys`, and nowhere else (one bucket). Each tenant's
objects lie under `tenants/{tenant}/`; the shared, read-only models under `models/`:
  models/{name}/model.json                  a model's record: its current version and versions
  models/{name}/{version}/model.json|weights  one version (content hash of weights and spec)
  uploads/{path}                            images stored with POST /v1/uploads
  inputs/{job}/{i}.png                      images uploaded with a job
  jobs/{job}/job.json                       the job manifest (spec, inputs, final status)
  jobs/{job}/items/{i}/item.json            prediction, timings
  jobs/{job}/items/{i}/{method}.png|.npy    one picture and the raw map per method
  jobs/{job}/units/{u}/...                  per-unit artefacts (figure, filter pictures)
  audits/{job}/partials/{u}.npz, audits/{job}/report.json|html
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlparse

import urllib3
import urllib3.connection
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError

from shared.settings import Settings

MISSING = ("NoSuchKey", "NoSuchObject", "NoSuchBucket")  # S3 error codes of an absent object
BUSY = ("InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout")  # S3 error codes worth a retry
API_RETRY_S = 2.0   # the API's retry budget, in units of `api_wait_s`; workers wait `storage_retry_s`


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


def _client(endpoint: str, s: Settings, patient: bool) -> Minio:
    """Workers wait `storage_timeout_s` per request and let urllib3 retry once; the API waits
    `api_wait_s`, leaves every retry to `Storage._call`, which keeps to its budget, and its
    connections can be released (`release_waiting`)."""
    url = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
    if patient:
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(2.0, s.storage_timeout_s), read=s.storage_timeout_s), maxsize=16,
            retries=urllib3.Retry(total=1, backoff_factor=0.1, status_forcelist=[500, 502, 503, 504]))
    else:
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=s.api_wait_s, read=s.api_wait_s), maxsize=16,
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
        self.expiry = timedelta(seconds=s.url_expiry_s)
        self.retry_s = s.storage_retry_s if patient else API_RETRY_S * s.api_wait_s
        self.attempt_s = s.storage_timeout_s if patient else s.api_wait_s   # one attempt's longest wait
        self.down = down or (lambda: "")
        self.client = _client(s.s3_endpoint, s, patient)
        # Presigned URLs sign the Host header: sign them for the endpoint clients use.
        self.public = _client(s.s3_public_endpoint, s, patient) if s.s3_public_endpoint else self.client

    def _call(self, fn, *args, **kw):
        deadline, delay = time.monotonic() + self.retry_s, 0.25
        while True:
            why = self.down()
            if why:
                raise StorageUnavailable(why)
            try:
                return fn(*args, **kw)
            except Exception as e:  # noqa: BLE001 - sorted by _transient
                if not _transient(e):
                    raise
                why = self.down()
                if why or time.monotonic() + delay + self.attempt_s > deadline:
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
        self._call(lambda: self.client.put_object(
            bucket_name=self.bucket, object_name=key, data=io.BytesIO(data), length=len(data),
            content_type=content_type))

    def put_json(self, key: str, obj) -> None:
        self.put(key, json.dumps(obj, indent=1, allow_nan=False).encode(), "application/json")

    def _get(self, key: str) -> bytes:
        resp = self.client.get_object(bucket_name=self.bucket, object_name=key)
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()

    def get(self, key: str) -> bytes:
        return self._call(self._get, key)

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

    def url(self, key: str) -> str:
        return self.public.presigned_get_object(bucket_name=self.bucket, object_name=key, expires=self.expiry)

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

    # --- uploads: images a tenant stores to name in jobs (`inputs`) and audits (`dataset`)
    def upload(self, path: str) -> str:
        return f"{self.root}uploads/{path}"

    def uploads(self, prefix: str = "") -> str:
        return f"{self.root}uploads/{prefix.strip('/') + '/' if prefix.strip('/') else ''}"

    # --- jobs and audits
    def input(self, job: str, i: int) -> str:
        return f"{self.root}inputs/{job}/{i}.png"

    def inputs(self, job: str) -> str:
        return f"{self.root}inputs/{job}/"

    def job(self, job: str) -> str:
        return f"{self.root}jobs/{job}/job.json"

    def item(self, job: str, i: int, name: str = "item.json") -> str:
        """`item.json`, or a method's file such as `saliency.png`."""
        return f"{self.root}jobs/{job}/items/{i}/{name}"

    def unit(self, job: str, unit: int, name: str) -> str:
        return f"{self.root}jobs/{job}/units/{unit}/{name}"

    def units(self, job: str) -> str:
        return f"{self.root}jobs/{job}/units/"

    def audit_partial(self, job: str, unit: int) -> str:
        return f"{self.root}audits/{job}/partials/{unit}.npz"

    def audit_partials(self, job: str) -> str:
        return f"{self.root}audits/{job}/partials/"

    def report(self, job: str, ext: str) -> str:
        """`json` or `html`."""
        return f"{self.root}audits/{job}/report.{ext}"

"""Object storage (MinIO or any S3) through the minio SDK, and the key layout.

Every object key is spelled here, in `Keys`, and nowhere else (one bucket):
  models/{name}/model.json, models/{name}/weights   a registered model
  inputs/{job}/{i}.png                      uploaded inputs
  jobs/{job}/job.json                       the job manifest (spec, inputs, final status)
  jobs/{job}/items/{i}/item.json            prediction, timings
  jobs/{job}/items/{i}/{method}.png|.npy    one picture and the raw map per method
  jobs/{job}/units/{u}/...                  per-unit artefacts (figure, filter pictures)
  audits/{job}/partials/{u}.npz, audits/{job}/report.json|html
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlparse

import urllib3
from minio import Minio
from minio.error import S3Error

from shared.settings import Settings


MISSING = ("NoSuchKey", "NoSuchObject", "NoSuchBucket")  # S3 error codes of an absent object


def _client(endpoint: str, s: Settings) -> Minio:
    url = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5, read=60),
        maxsize=16,
        retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )
    return Minio(
        endpoint=url.netloc,
        access_key=s.s3_access_key,
        secret_key=s.s3_secret_key,
        secure=url.scheme == "https",
        region=s.s3_region,
        http_client=http,
    )


class Storage:
    """One per process (the minio client is not fork-safe): use `storage(settings)`."""

    def __init__(self, s: Settings):
        self.bucket = s.bucket
        self.expiry = timedelta(seconds=s.url_expiry_s)
        self.client = _client(s.s3_endpoint, s)
        # Presigned URLs sign the Host header: sign them for the endpoint clients use.
        self.public = _client(s.s3_public_endpoint, s) if s.s3_public_endpoint else self.client

    def ensure_bucket(self) -> None:
        try:
            if not self.client.bucket_exists(bucket_name=self.bucket):
                self.client.make_bucket(bucket_name=self.bucket)
        except S3Error as e:  # another process created it between the two calls
            if e.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.client.put_object(
            bucket_name=self.bucket, object_name=key, data=io.BytesIO(data), length=len(data),
            content_type=content_type,
        )

    def put_json(self, key: str, obj) -> None:
        self.put(key, json.dumps(obj, indent=1).encode(), "application/json")

    def get(self, key: str) -> bytes:
        resp = self.client.get_object(bucket_name=self.bucket, object_name=key)
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()

    def get_json(self, key: str):
        return json.loads(self.get(key))

    def get_json_or_none(self, key: str):
        try:
            return self.get_json(key)
        except S3Error as e:
            if e.code in MISSING:
                return None
            raise

    def exists(self, key: str) -> bool:
        try:
            self.client.stat_object(bucket_name=self.bucket, object_name=key)
            return True
        except S3Error as e:
            if e.code in MISSING:
                return False
            raise

    def list(self, prefix: str, recursive: bool = True) -> list[str]:
        return [o.object_name for o in self.client.list_objects(
            bucket_name=self.bucket, prefix=prefix, recursive=recursive)]

    def url(self, key: str) -> str:
        return self.public.presigned_get_object(bucket_name=self.bucket, object_name=key, expires=self.expiry)

    def ping(self) -> None:
        self.client.bucket_exists(bucket_name=self.bucket)


_per_process: dict[tuple[int, str], Storage] = {}


def storage(s: Settings) -> Storage:
    """The process's Storage for these settings (a fresh one after fork)."""
    key = (os.getpid(), s.model_dump_json())
    if key not in _per_process:
        _per_process[key] = Storage(s)
    return _per_process[key]


@dataclass(frozen=True)
class Keys:
    """The object keys of the layout above."""

    def model(self, name: str) -> str:
        return f"models/{name}/model.json"

    def weights(self, name: str) -> str:
        return f"models/{name}/weights"

    def models(self) -> str:
        return "models/"

    def model_name(self, key: str) -> str | None:
        """The model a listed key under `models()` is the manifest of, else None."""
        rest = key[len(self.models()):].split("/") if key.startswith(self.models()) else []
        return rest[0] if len(rest) == 2 and rest[1] == "model.json" else None

    def input(self, job: str, i: int) -> str:
        return f"inputs/{job}/{i}.png"

    def job(self, job: str) -> str:
        return f"jobs/{job}/job.json"

    def item(self, job: str, i: int, name: str = "item.json") -> str:
        """`item.json`, or a method's file such as `saliency.png`."""
        return f"jobs/{job}/items/{i}/{name}"

    def unit(self, job: str, unit: int, name: str) -> str:
        return f"jobs/{job}/units/{unit}/{name}"

    def units(self, job: str) -> str:
        return f"jobs/{job}/units/"

    def audit_partial(self, job: str, unit: int) -> str:
        return f"audits/{job}/partials/{unit}.npz"

    def audit_partials(self, job: str) -> str:
        return f"audits/{job}/partials/"

    def report(self, job: str, ext: str) -> str:
        """`json` or `html`."""
        return f"audits/{job}/report.{ext}"


keys = Keys()


def record_final(st: Storage, state: dict) -> None:
    """Copy a job's final state (JobStore.get) into its manifest, the durable record."""
    manifest = st.get_json(keys.job(state["id"]))
    manifest.update({k: state[k] for k in ("status", "progress", "started", "finished", "error")})
    st.put_json(keys.job(state["id"]), manifest)

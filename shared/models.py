"""Registered models' records, with one owner: every read and write of them goes through
`ModelRecords` (the API registers, replaces, lists and deletes; the worker reads a version
and records its inspection).

Two kinds of object, each written by its own step, so no step can overwrite another's work:
  models/{name}/model.json             the model's record: its current version and the list
                                        of its versions; written only by register and delete
  models/{name}/{version}/model.json    a version's record: the spec, format, weights' hash
                                        and the inspection's verdict (status, layers, FLOPs);
                                        written by register when the version is new (or not
                                        ready) and then only by its inspection
The model as the API shows it (`ModelInfo`) is put together when it is read: the current
version's record with every version's status. Each change also holds a short per-model lock
in Redis, so two changes of one model (two replaces, a replace and a delete, a delete and a
finishing inspection) happen one after the other; a lock whose holder died lapses after
`LOCK_S`.
"""
from __future__ import annotations

import json
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from minio.error import S3Error

from shared.redis_keys import RedisKeys
from shared.storage import MISSING, Keys, Storage

LOCK_S = 30.0       # a change holds its model's lock at most this long (a few small reads and writes)
LOCK_WAIT_S = 35.0  # how long a change waits for the lock before giving up
RESULT = ("status", "error", "layers", "hooks", "parameters", "gflops")   # what an inspection sets
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class ModelExists(Exception):
    """The name is taken and the caller did not ask for a new version."""


class ModelBusy(Exception):
    """Another change of the model held its lock for longer than `LOCK_WAIT_S`."""


def version_of(weights_hash, spec: dict) -> str:
    """Content hash of the weights (their running sha256, left as it is) and the spec: a
    job binds it at submit."""
    h = weights_hash.copy()
    h.update(json.dumps(spec, sort_keys=True).encode())
    return h.hexdigest()[:16]


class ModelRecords:
    """The model records of one owner (`keys`: a tenant's, or the shared models'). Reads
    need only storage; changes also need Redis (`redis`) for the per-model lock."""

    def __init__(self, storage: Storage, keys: Keys, redis=None, redis_keys: RedisKeys = RedisKeys()):
        self.st, self.keys, self.r, self.redis_keys = storage, keys, redis, redis_keys

    # --- reads
    def version(self, name: str, version: str) -> dict | None:
        """One version's record (what a job bound to it loads), or None."""
        return self.st.get_json_or_none(self.keys.version(name, version))

    def weights(self, name: str, version: str) -> bytes | None:
        """A version's uploaded file, or None when it was deleted."""
        try:
            return self.st.get(self.keys.weights(name, version))
        except S3Error as e:
            if e.code in MISSING:
                return None
            raise

    def exists(self, name: str) -> bool:
        return self.st.exists(self.keys.model(name))

    def get(self, name: str) -> dict | None:
        """The model as the API shows it: its current version's record with `versions` (each
        with its own status); None when there is no such model."""
        record = self.st.get_json_or_none(self.keys.model(name))
        if record is None:
            return None
        versions, current = [], None
        for entry in record.get("versions", []):
            info = self.version(name, entry["version"])
            if info is None:    # removed by a delete that runs now
                continue
            versions.append({"version": entry["version"], "created": entry.get("created", info["created"]),
                             "status": info["status"], "error": info.get("error")})
            if entry["version"] == record["version"]:
                current = info
        return None if current is None else {**current, "versions": versions}

    def names(self) -> list[str]:
        return sorted(filter(None, map(self.keys.model_name, self.st.list(self.keys.models(), limit=10000))))

    def list(self) -> list[dict]:
        """Every model of this owner, by name (read side by side: each is a few small objects)."""
        with ThreadPoolExecutor(8) as pool:
            return [m for m in pool.map(self.get, self.names()) if m is not None]

    # --- changes, each under the model's lock
    @contextmanager
    def _locked(self, name: str):
        if self.r is None:
            raise RuntimeError("changing model records needs Redis (the per-model lock)")
        key, token = self.redis_keys.model_lock(self.keys.root or "shared/", name), secrets.token_hex(8)
        deadline = time.monotonic() + LOCK_WAIT_S
        while not self.r.set(key, token, nx=True, px=int(LOCK_S * 1000)):
            if time.monotonic() > deadline:
                raise ModelBusy(f"model {name!r} is being changed; try again")
            time.sleep(0.02)
        try:
            yield
        finally:
            self.r.eval(_RELEASE, 1, key, token)

    def register(self, info: dict, data: bytes, replace: bool) -> tuple[dict, bool]:
        """Make `info` (the completed spec with `format`, `version`, `weights_sha256`, `shared`)
        the model's current version, its weights `data`. Returns (the version's record,
        whether it needs an inspection: not when this very version is already ready).
        ModelExists when the name is taken and `replace` is false."""
        name, version = info["name"], info["version"]
        self.st.put(self.keys.weights(name, version), data)   # content-addressed: outside the lock
        with self._locked(name):
            record = self.st.get_json_or_none(self.keys.model(name))
            if record is not None and not replace:
                raise ModelExists(f"model {name!r} exists; POST with ?replace=1 to register a new version")
            listed = [v for v in (record or {}).get("versions", []) if v["version"] != version]
            known = self.version(name, version) if record and len(listed) < len(record["versions"]) else None
            if known is not None and known["status"] == "ready":
                current, inspect = known, False
            else:
                if not self.st.exists(self.keys.weights(name, version)):   # a delete ran in between
                    self.st.put(self.keys.weights(name, version), data)
                current = {**info, "status": "registering", "layers": [], "error": None, "created": time.time()}
                self.st.put_json(self.keys.version(name, version), current)
                inspect = True
            versions = listed + [{"version": version, "created": current["created"]}]
            self.st.put_json(self.keys.model(name), {"name": name, "version": version, "versions": versions,
                                                     "shared": bool(info.get("shared")), "updated": time.time()})
        return current, inspect

    def set_result(self, name: str, version: str, result: dict) -> dict | None:
        """Record a version's inspection (`RESULT` fields). None, and nothing written, when
        the model or that version was deleted meanwhile."""
        with self._locked(name):
            record = self.st.get_json_or_none(self.keys.model(name))
            info = self.version(name, version)
            if record is None or info is None or version not in {v["version"] for v in record.get("versions", [])}:
                return None
            info.update({k: result[k] for k in RESULT if k in result})
            if info["status"] != "ready":
                info.update(layers=[], error=result.get("error") or "the model could not be inspected")
            self.st.put_json(self.keys.version(name, version), info)
        return info

    def delete(self, name: str) -> int:
        """Remove the model, every version's record and weights, whatever their status;
        the number of objects removed (0: no such model)."""
        with self._locked(name):
            if not self.exists(name):
                return 0
            self.st.remove(self.keys.model(name))    # first: the model is gone for readers at once
            below = self.st.list(self.keys.model_files(name))
            for key in below:
                self.st.remove(key)
        return 1 + len(below)

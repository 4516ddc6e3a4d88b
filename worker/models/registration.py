"""A registered model version checked by the confined inspection
(`worker.compute.client.inspect_untrusted`), the verdict recorded in the version's record
(through `shared.models.ModelRecords`, the records' one owner)."""
from __future__ import annotations

import hashlib
import json
import logging

from shared.models import ModelRecords
from shared.redis_keys import RedisKeys
from shared.settings import Settings
from shared.storage import Keys, Storage
from worker.compute.client import inspect_untrusted

log = logging.getLogger("xaiq.worker")


def checked(r, info: dict, data: bytes, s: Settings) -> dict:
    """The confined inspection's result; a `ready` one is remembered by what it depends on
    (the weights and how they are read), so the same model registered again, under any
    name or tenant, is ready at once."""
    basis = {k: info.get(k) for k in ("format", "architecture", "input", "preprocess")} | {"classes": len(info["classes"])}
    key = RedisKeys(s.redis_prefix).inspected(hashlib.sha256(data + json.dumps(basis, sort_keys=True).encode())
                                              .hexdigest())
    if r is not None and (hit := r.get(key)):
        return json.loads(hit)
    result = inspect_untrusted(info, data, timeout_s=s.model_inspect_timeout_s, memory_mb=s.model_inspect_memory_mb,
                               warm=s.model_inspect_warm)
    if r is not None and result.get("status") == "ready":
        r.set(key, json.dumps(result), ex=7 * 24 * 3600)
    return result


def inspect_version(st: Storage, keys: Keys, name: str, version: str, s: Settings, r=None) -> dict | None:
    """Inspect one version and record the verdict; None when the model was deleted first."""
    records = ModelRecords(st, keys, r, RedisKeys(s.redis_prefix))
    info = records.version(name, version)
    data = records.weights(name, version) if info is not None else None
    if info is None or data is None:
        log.info("model %s version %s: deleted before its inspection", name, version)
        return None
    result = checked(r, info, data, s)
    recorded = records.set_result(name, version, result)
    log.info("model %s version %s: %s %s", name, version, result.get("status"), result.get("error") or "")
    return recorded
